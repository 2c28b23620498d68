"""Contrast pairs for activation and attribution patching, in the evaluation's own terms (METHOD.md §5a).

Every evaluation scores a *continuation* of a prompt: TruthfulQA's MC1/MC2 the log-prob of each
answer after the question, NQ-Swap the answer after the passage, CAA the aligned letter after the
A/B item. A pair therefore measures, on one of the bank's questions, ::

    metric = log p(aligned answer | context + prompt) - log p(violating answer | context + prompt)

(each log-prob summed over the answer's tokens, exactly as the evaluations sum them), and its two
runs differ in the behaviour through their context only:

- clean     = ``n_demos`` demonstrations, each another bank question answered with one of its
              **aligned** answers, then the pair's own prompt;
- corrupted = the SAME demonstrations (same questions, same order) answered with one of their
              **violating** answers, then the same prompt.

Demonstrations are ``prompt + answer`` of the task's own examples, joined by blank lines, so the
design is the same for every task (TruthfulQA ``Q: … A: …``, NQ-Swap passages, CAA A/B items and
``file:`` tasks) and needs nothing but the bank's examples. A demonstration is never the pair's
own question and never a question outside the bank (the main job's bank holds only the fold's
train+val questions). Choices are seeded per pair (``seed``, pair index), so the first ``n``
pairs are the same whatever ``n_pairs`` is: activation patching's few pairs are the first of
attribution's many.

Where the modules are patched. The two contexts differ in length and content, so positions can
only be matched inside the part both runs share, the pair's own prompt and answer, counted from
its start. ``positions="answer"`` (the default) patches the positions whose next-token
predictions the metric reads: the prompt's last token and every answer token but the last. That
is the same few tokens for every task, whereas a whole NQ-Swap prompt is a ~200-token passage
(patching cost grows with it 20-fold), and it is where the REAL/ITI readout sits (the last token).
``positions="question"`` patches the whole own prompt as well. Everything before the patched
positions is identical to the corrupted run, so activation patching reuses the corrupted run's KV
cache there and recomputes only the patched positions (see :mod:`.patching`).

Aggregation. ``gap = metric(clean) - metric(corrupted)`` (nats). A module's score is
``Σ effect / Σ gap`` over the kept pairs, with ``effect = metric(patched) - metric(corrupted)``:
the fraction of the pairs' summed gap restored by that module (equal to each pair's fraction when
they agree, and never dominated by a pair whose gap is ~0, unlike a mean of per-pair ratios).
Pairs whose ``|gap|`` is below ``min_gap`` nats are dropped and counted: their contexts did not
move the behaviour, so there is nothing of it to restore. Activation and attribution patching use
the same pairs, positions, metric and aggregation, so their scores are on one scale.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import ScoringError
from ..models.identity import model_names, names_match
from ..tasks.base import ALIGNED, VIOLATING, Example
from .scores import ModuleScores

Positions = Literal["answer", "question"]
POSITIONS: tuple[str, ...] = ("answer", "question")
DEMO_SEPARATOR = "\n\n"

# Reasons a group yields no pair (keys of ContrastPairs.skipped_counts / meta["pairs"]["skipped"]).
SKIP_ONE_LABEL = "group lacks an aligned or a violating answer"
SKIP_NO_DEMOS = "too few other groups for the demonstrations"
SKIP_MERGE = "prompt and answer merge into one token at their boundary"
SKIP_EMPTY = "an answer has no tokens"
SKIP_SMALL_GAP = "|clean - corrupted| metric gap below min_gap"

METRIC_DESCRIPTION = (
    "log p(aligned answer | context + prompt) - log p(violating answer | context + prompt), summed over "
    "answer tokens; clean context = demonstrations answered with aligned answers, corrupted = the same "
    "demonstrations answered with violating ones; score = sum(patched - corrupted) / sum(clean - corrupted) "
    "over the kept pairs"
)


@dataclass(frozen=True)
class PairConfig:
    """Options of the patching-style scorers (the pair design is in the module docstring).

    ``n_pairs`` pairs (one per bank question, seeded), each with ``n_demos`` demonstrations.
    Pairs whose ``|clean - corrupted|`` metric gap is below ``min_gap`` nats are dropped (and
    counted in ``meta["pairs"]``). ``positions``: where modules are patched ("answer": the
    prompt's last token and the answer tokens; "question": the whole own prompt too).
    ``batch_size``: pairs per forward pass of the clean/corrupted runs (attribution's passes).

    ``min_gap`` 0.5 nats: the demonstrations must change the odds of the aligned over the
    violating answer by a factor e^0.5 ≈ 1.65 for the pair to count. On SmolLM2-135M and
    TruthfulQA (3 demonstrations) the gaps spread widely (median |gap| ~1.4 nats) and ~80 % of
    pairs pass; a pair below it contributes almost nothing to Σ gap but its effects, made of the
    demonstrations' content rather than of the behaviour, would still add to Σ effect.
    """

    n_pairs: int = 64
    n_demos: int = 3
    min_gap: float = 0.5
    positions: str = "answer"  # one of POSITIONS (checked below, with a message)
    batch_tokens: int = 2048

    def __post_init__(self):
        if self.n_pairs < 1:
            raise ScoringError(f"n_pairs must be at least 1; got {self.n_pairs}")
        if self.n_demos < 1:
            raise ScoringError(f"n_demos must be at least 1 (the demonstrations make the contrast); got {self.n_demos}")
        if not self.min_gap >= 0:
            raise ScoringError(f"min_gap must be >= 0 (nats); got {self.min_gap}")
        if self.positions not in POSITIONS:
            raise ScoringError(f"positions must be one of {list(POSITIONS)}; got {self.positions!r}")
        if self.batch_tokens < 1:
            raise ScoringError(f"batch_tokens must be at least 1; got {self.batch_tokens}")


@dataclass(frozen=True)
class SkippedPair:
    group: str
    reason: str


@dataclass(frozen=True)
class ContrastPair:
    """One question's clean and corrupted context, its prompt and its two answers, as token ids.

    ``clean_context`` / ``corrupted_context`` start with BOS when the model prepends one; the
    prompt and answers never do. The model reads ``context + prompt + answer``.
    """

    group: str
    demo_groups: tuple[str, ...]
    clean_context: Int[Tensor, " clean"]
    corrupted_context: Int[Tensor, " corrupted"]
    prompt: Int[Tensor, " prompt"]
    aligned: Int[Tensor, " aligned"]
    violating: Int[Tensor, " violating"]

    @property
    def answers(self) -> tuple[Tensor, Tensor]:
        return self.aligned, self.violating

    def context(self, which: str) -> Tensor:
        if which not in ("clean", "corrupted"):
            raise ScoringError(f"context must be 'clean' or 'corrupted'; got {which!r}")
        return self.clean_context if which == "clean" else self.corrupted_context

    def patch_start(self, positions: Positions) -> int:
        """Index into ``prompt`` of the first patched position."""
        return len(self.prompt) - 1 if positions == "answer" else 0


@dataclass(frozen=True)
class ContrastPairs:
    pairs: tuple[ContrastPair, ...]
    skipped: tuple[SkippedPair, ...] = ()
    n_demos: int = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ContrastPairs(self.pairs[index], self.skipped, self.n_demos)
        return self.pairs[index]

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(p.group for p in self.pairs)

    @property
    def skipped_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))

    def batches(self, max_tokens: int) -> list["ContrastPairs"]:
        """Consecutive pairs grouped so that one forward of their whole inputs (two rows per
        pair, padded to the longest) holds at most ``max_tokens`` tokens; a longer pair runs alone."""
        if max_tokens < 1:
            raise ScoringError(f"max_tokens must be at least 1; got {max_tokens}")
        out, start, width = [], 0, 0
        for i, pair in enumerate(self.pairs):
            length = max(len(pair.clean_context), len(pair.corrupted_context)) + len(pair.prompt) + max(
                len(pair.aligned), len(pair.violating))
            if i > start and 2 * (i - start + 1) * max(width, length) > max_tokens:
                out.append(self[start:i])
                start, width = i, 0
            width = max(width, length)
        out.append(self[start:])
        return out


# --------------------------------------------------------------------------- building pairs
def build_contrast_pairs(
    examples: Sequence[Example], model, *, n_pairs: int, n_demos: int = 3, seed: int = 0
) -> ContrastPairs:
    """Up to ``n_pairs`` pairs, one per group, groups in a seeded order (see the module docstring).

    ``model`` needs ``to_tokens`` and ``tokenizer`` (a ``TransformerBridge`` has both). Each
    pair's choices (its aligned and violating answer, its demonstration groups and their
    answers) come from a generator seeded with ``(seed, pair index)``. Groups that give no pair
    are recorded in ``skipped``. Raises :class:`ScoringError` if none does.
    """
    if n_pairs < 1:
        raise ScoringError(f"n_pairs must be at least 1; got {n_pairs}")
    if n_demos < 1:
        raise ScoringError(f"n_demos must be at least 1; got {n_demos}")
    by_group: dict[str, dict[int, list[Example]]] = {}
    for e in examples:
        by_group.setdefault(e.group, {ALIGNED: [], VIOLATING: []}).setdefault(e.label, []).append(e)
    names = list(by_group)
    usable = [g for g in names if by_group[g][ALIGNED] and by_group[g][VIOLATING]]
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]

    mirrors = _mirror_groups(by_group, usable)
    pairs, skipped = [], []
    for index, group in enumerate(order):
        if len(pairs) == n_pairs:
            break
        rng = np.random.default_rng((seed, index))
        aligned, violating = by_group[group][ALIGNED], by_group[group][VIOLATING]
        if not aligned or not violating:
            skipped.append(SkippedPair(group, SKIP_ONE_LABEL))
            continue
        others = [g for g in usable if g != group]
        if len(others) < n_demos:
            skipped.append(SkippedPair(group, SKIP_NO_DEMOS))
            continue
        a, v = _pick(rng, aligned), _pick(rng, violating)
        demos = _pick_demos(rng, others, mirrors, n_demos)
        clean = [_pick(rng, by_group[d][ALIGNED]) for d in demos]
        corrupted = [_pick(rng, by_group[d][VIOLATING]) for d in demos]
        prompt, answers, reason = _prompt_and_answers(model, a.prompt, (a.answer, v.answer))
        if reason:
            skipped.append(SkippedPair(group, reason))
            continue
        pairs.append(ContrastPair(
            group, tuple(demos), _context_tokens(model, clean), _context_tokens(model, corrupted), prompt, *answers,
        ))
    if not pairs:
        counts = dict(Counter(s.reason for s in skipped))
        raise ScoringError(
            f"no contrast pair could be built from {len(examples)} example(s) in {len(names)} group(s) "
            f"(skipped: {counts or 'none'}); patching needs groups with at least one aligned (label 1) and "
            f"one violating (label 0) answer, and at least {n_demos} other such groups for the demonstrations"
        )
    return ContrastPairs(tuple(pairs), tuple(skipped), n_demos)


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _answer_sets(answers: dict[int, list[Example]]) -> tuple[frozenset[str], frozenset[str]]:
    return frozenset(e.answer for e in answers[ALIGNED]), frozenset(e.answer for e in answers[VIOLATING])


def _mirror_groups(by_group, usable: list[str]) -> dict[str, list[str]]:
    """For each group, the groups whose aligned and violating answers are its own, swapped
    (CAA: the items whose aligned letter is this item's violating one)."""
    by_sets: dict[tuple, list[str]] = {}
    for g in usable:
        by_sets.setdefault(_answer_sets(by_group[g]), []).append(g)
    return {g: by_sets.get(_answer_sets(by_group[g])[::-1], []) for g in usable}


def _pick_demos(rng: np.random.Generator, others: list[str], mirrors: dict[str, list[str]], n: int) -> list[str]:
    """``n`` distinct groups from ``others``, drawn in mirrored couples where possible: after a
    demonstration answered (x aligned, y violating), the next is one answered (y, x) if any is left.

    Answers that recur across questions (CAA's letters) then appear equally often in the clean
    and the corrupted context, so "which letter the demonstrations picked" cannot stand in for
    the behaviour. Questions with answers of their own (TruthfulQA) have no mirrors: a plain draw.
    """
    allowed = set(others)
    chosen: list[str] = []
    while len(chosen) < n:
        previous = chosen[-1] if len(chosen) % 2 == 1 else None
        pool = [g for g in mirrors.get(previous, ()) if g in allowed and g not in chosen] if previous else []
        if pool:
            chosen.append(pool[int(rng.integers(len(pool)))])
            continue
        pick = others[int(rng.integers(len(others)))]
        while pick in chosen:  # n is far below len(others): a few redraws at most
            pick = others[int(rng.integers(len(others)))]
        chosen.append(pick)
    return chosen


def _context_tokens(model, demos: Sequence[Example]) -> Tensor:
    text = DEMO_SEPARATOR.join(e.prompt + e.answer for e in demos) + DEMO_SEPARATOR
    return _tokens(model, text, bos=True)


def _prompt_and_answers(model, prompt: str, answers: Sequence[str]):
    """Prompt tokens and each answer's tokens (those of ``prompt + answer`` beyond the prompt's), or a skip reason."""
    prompt_tokens = _tokens(model, prompt, bos=False)
    out = []
    for answer in answers:
        full = _tokens(model, prompt + answer, bos=False)
        if len(full) < len(prompt_tokens) or not torch.equal(full[: len(prompt_tokens)], prompt_tokens):
            return None, None, SKIP_MERGE
        if len(full) == len(prompt_tokens):
            return None, None, SKIP_EMPTY
        out.append(full[len(prompt_tokens):])
    if len(prompt_tokens) == 0:
        return None, None, SKIP_EMPTY
    return prompt_tokens, out, None


def _tokens(model, text: str, *, bos: bool) -> Tensor:
    from ..tokens import tokenize

    if bos:
        return tokenize(model, text)  # BOS as the model prepends it; never truncated
    return model.to_tokens(text, prepend_bos=False, truncate=False)[0].cpu()


# --------------------------------------------------------------------------- scores
def scores_from_pair_effects(
    effects: Float[Tensor, "pair *module"],
    gaps: Float[Tensor, " pair"],
    pairs: ContrastPairs,
    *,
    min_gap: float,
    method: str,
    unit: str,
    site: str,
    seed: int,
    config: dict,
    bank_meta: dict,
) -> ModuleScores:
    """Per module ``Σ effect / Σ gap`` over the pairs whose ``|gap| >= min_gap`` (see the module docstring).

    ``effects``: ``patched - corrupted`` metric changes (measured, or estimated by attribution
    patching), ``gaps``: ``clean - corrupted``, both in nats. ``meta["pairs"]`` records how many
    pairs were built, kept and dropped (and why), the threshold and the mean gaps. Diagnostics:
    ``stderr`` (the ratio estimator's linearised standard error over pairs) and ``effect_nats``
    (the mean effect over kept pairs).
    """
    effects, gaps = effects.detach().cpu().double(), gaps.detach().cpu().double()
    if effects.shape[0] != len(pairs) or gaps.shape != (len(pairs),):
        raise ScoringError(
            f"{method}: expected one effect row and one gap per pair ({len(pairs)}); found effects "
            f"{tuple(effects.shape)} and gaps {tuple(gaps.shape)}"
        )
    keep = gaps.abs() >= min_gap
    dropped = tuple(SkippedPair(g, SKIP_SMALL_GAP) for g, k in zip(pairs.groups, keep.tolist()) if not k)
    kept_gaps, kept_effects = gaps[keep], effects[keep]
    total_gap = float(kept_gaps.sum())
    if not keep.any() or abs(total_gap) < max(min_gap, 1e-12):
        raise ScoringError(
            f"{method}: of {len(pairs)} contrast pair(s), {int(keep.sum())} have |gap| >= min_gap={min_gap} nats "
            f"and their gaps sum to {total_gap:.3g} (all gaps: mean {float(gaps.mean()):.3g}, largest |gap| "
            f"{float(gaps.abs().max()):.3g}); the demonstrations do not move the behaviour, so there is nothing to "
            "restore. Use more pairs (n_pairs), more demonstrations (n_demos) or a smaller min_gap"
        )
    shape = (-1,) + (1,) * (effects.ndim - 1)
    ratio = kept_effects.sum(0) / total_gap
    n = int(keep.sum())
    residual = kept_effects - ratio[None] * kept_gaps.reshape(shape)
    stderr = (residual.pow(2).sum(0) * n / max(n - 1, 1)).sqrt() / abs(total_gap)
    meta = {
        "site": site,
        "model": bank_meta.get("model"),
        "task": bank_meta.get("task"),
        "seed": seed,
        "method": method,
        "score_unit": unit,
        "config": config,
        "pairs": {
            "n_built": len(pairs),
            "n_kept": n,
            "n_dropped_small_gap": len(dropped),
            "n_groups_skipped": len(pairs.skipped),
            "skipped": dict(Counter(s.reason for s in pairs.skipped + dropped)),
            "min_gap_nats": min_gap,
            "mean_gap_nats": float(gaps.mean()),
            "mean_kept_gap_nats": float(kept_gaps.mean()),
            "mean_abs_gap_nats": float(gaps.abs().mean()),
            "n_negative_gap": int((gaps < 0).sum()),
            "n_demos": pairs.n_demos,
            "metric": METRIC_DESCRIPTION,
        },
    }
    return ModuleScores(
        scores=ratio.float(),
        method=method,
        config=config,
        diagnostics={"stderr": stderr.float(), "effect_nats": kept_effects.mean(0).float()},
        meta=meta,
    )


# --------------------------------------------------------------------------- checks and the shared body
def check_model_for_bank(bank, model, *, method: str) -> None:
    """A model is given, and it is the one the bank describes (name and module shape)."""
    recorded = bank.meta.get("model")
    if model is None:
        raise ScoringError(
            f"{method} runs the model, but model=None was given; pass the model the bank was "
            f"collected from (bank model: {recorded or 'not recorded'}), e.g. model=load_model(...)"
        )
    if recorded is not None and not names_match(recorded, model):
        shown = recorded.get("name", recorded) if isinstance(recorded, dict) else recorded
        raise ScoringError(
            f"{method}: the bank was collected from model {shown!r} but the given model is "
            f"{sorted(model_names(model))}; load the bank's model or collect a bank for this one"
        )
    cfg = model.cfg
    expected = (cfg.n_layers, cfg.n_heads) if bank.is_head_site else (cfg.n_layers,)
    if tuple(bank.module_shape) != tuple(expected):
        raise ScoringError(
            f"{method}: the bank has modules of shape {tuple(bank.module_shape)} at site {bank.site!r}, "
            f"but the model has {expected}; the bank belongs to another model"
        )
    if model.training:
        raise ScoringError(f"{method} needs the model in evaluation mode; call model.eval() first")


def score_with_pairs(bank, model, *, seed: int, cfg: PairConfig, effects_fn, method: str, unit: str,
                     progress: bool = True) -> ModuleScores:
    """The body shared by the patching-style scorers: build the bank's contrast pairs, measure
    per-pair module effects with ``effects_fn`` (activation or attribution patching), normalise."""
    check_model_for_bank(bank, model, method=method)
    pairs = build_contrast_pairs(bank.examples, model, n_pairs=cfg.n_pairs, n_demos=cfg.n_demos, seed=seed)
    effects, gaps = effects_fn(model, pairs, site=bank.site, cfg=cfg, progress=progress)
    return scores_from_pair_effects(
        effects, gaps, pairs, min_gap=cfg.min_gap, method=method, unit=unit,
        site=bank.site, seed=seed, config=asdict(cfg), bank_meta=bank.meta,
    )
