"""Contrast pairs for the patching-style scorers (activation and attribution patching).

From a bank's examples, each group (question) gives one pair: one aligned and one violating
answer (picked with a seeded generator), written as a CAA-style two-option prompt whose
option order is swapped between the two runs::

    clean     = "{question}\\n\\nChoices:\\n (A) {aligned}\\n (B) {violating}\\nAnswer: ("
    corrupted = "{question}\\n\\nChoices:\\n (A) {violating}\\n (B) {aligned}\\nAnswer: ("

Sign convention. The metric is the SAME function on both runs:
``logit("A") - logit("B")`` at the last prompt token, where "A" is the letter of the aligned
answer in the CLEAN prompt. It is high on the clean run when the model prefers the aligned
answer, and on the corrupted run (where "A" is the violating answer) it is low for the same
model. A module's patching score is then ``(patched - corrupted) / (clean - corrupted)``: the
fraction of the clean-corrupted gap restored by giving the corrupted run that module's clean
activation (1 = fully restored, 0 = no effect). The ratio keeps its meaning when a model
prefers the violating answer (negative gap); pairs whose gap is ~0 are skipped by the scorers.

Both prompts hold the same characters, so they usually tokenise to the same length; a pair
whose lengths differ cannot be aligned position by position and is skipped (and counted).
Pairs of different lengths are batched by RIGHT-padding: the model is causal, so the padding
never influences a real position, and the metric is read at each pair's last real token.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import ScoringError
from ..models import model_identity
from ..tasks.base import ALIGNED, VIOLATING, Example
from . import ModuleScores

CAA_TEMPLATE = "{question}\n\nChoices:\n (A) {first}\n (B) {second}\nAnswer: ("
LETTER_A, LETTER_B = "A", "B"

# Reasons a group yields no pair (keys of ContrastPairs.skipped_counts).
SKIP_ONE_LABEL = "group lacks an aligned or a violating answer"
SKIP_LENGTH = "clean and corrupted prompts tokenise to different lengths"
SKIP_SMALL_GAP = "clean-corrupted metric gap below min_gap"
METRIC_DESCRIPTION = (
    "logit(A) - logit(B) at the last prompt token on both runs; A = the aligned answer's letter "
    "in the clean prompt; score = (patched - corrupted) / (clean - corrupted), mean over pairs"
)


Positions = Literal["all", "last"]


@dataclass(frozen=True)
class PairConfig:
    """Options of the patching-style scorers (activation and attribution patching share them).

    ``n_pairs`` groups are paired (seeded); ``batch_size`` pairs run per forward. Pairs whose
    ``|clean - corrupted|`` metric gap is below ``min_gap`` logits have no meaningful "fraction
    restored" and are skipped (counted in ``meta["pairs"]``). ``positions``: patch the module at
    every token ("all") or at the last token only.
    """

    n_pairs: int = 64
    batch_size: int = 8
    min_gap: float = 1e-3
    positions: Positions = "all"

    def __post_init__(self):
        if self.n_pairs < 1:
            raise ScoringError(f"n_pairs must be at least 1; got {self.n_pairs}")
        if self.batch_size < 1:
            raise ScoringError(f"batch_size must be at least 1; got {self.batch_size}")
        if not self.min_gap >= 0:
            raise ScoringError(f"min_gap must be >= 0 (logits); got {self.min_gap}")
        if self.positions not in ("all", "last"):
            raise ScoringError(f"positions must be 'all' or 'last'; got {self.positions!r}")


@dataclass(frozen=True)
class SkippedPair:
    group: str
    reason: str


@dataclass(frozen=True)
class ContrastPairs:
    """Token ids of paired clean/corrupted prompts, right-padded to one length.

    ``lengths[i]`` is pair i's real token count (equal for its clean and corrupted prompt);
    the metric is read at position ``lengths[i] - 1``.
    """

    clean: Int[Tensor, "pair pos"]
    corrupted: Int[Tensor, "pair pos"]
    lengths: Int[Tensor, "pair"]
    token_a: int
    token_b: int
    groups: tuple[str, ...]
    skipped: tuple[SkippedPair, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def skipped_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))

    def position_mask(self) -> Float[Tensor, "pair pos"]:
        """1 at real token positions, 0 at padding."""
        positions = torch.arange(self.clean.shape[1], device=self.lengths.device)
        return (positions[None, :] < self.lengths[:, None]).float()

    def last_position_mask(self) -> Float[Tensor, "pair pos"]:
        """1 at each pair's last real token, 0 elsewhere."""
        positions = torch.arange(self.clean.shape[1], device=self.lengths.device)
        return (positions[None, :] == self.lengths[:, None] - 1).float()

    def logit_diff(self, logits: Float[Tensor, "pair pos d_vocab"]) -> Float[Tensor, "pair"]:
        """``logit("A") - logit("B")`` at each pair's last real token (see module docstring)."""
        last = logits[torch.arange(logits.shape[0], device=logits.device), self.lengths.to(logits.device) - 1]
        return last[:, self.token_a] - last[:, self.token_b]

    def batches(self, size: int) -> Iterator["ContrastPairs"]:
        """Consecutive chunks of ``size`` pairs, padding trimmed to each chunk's longest pair."""
        if size < 1:
            raise ScoringError(f"batch size must be at least 1; got {size}")
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            width = int(self.lengths[start:stop].max())
            yield ContrastPairs(
                self.clean[start:stop, :width],
                self.corrupted[start:stop, :width],
                self.lengths[start:stop],
                self.token_a,
                self.token_b,
                self.groups[start:stop],
            )

    def to(self, device) -> "ContrastPairs":
        return ContrastPairs(
            self.clean.to(device), self.corrupted.to(device), self.lengths.to(device),
            self.token_a, self.token_b, self.groups, self.skipped,
        )

    def report(self) -> dict:
        """JSON-ready summary for score metadata."""
        return {"n_pairs": len(self), "skipped": self.skipped_counts}


def question_from_prompt(prompt: str) -> str:
    """The question of a task prompt: ``"Q: {question} A:"`` -> ``question``; other prompts as is."""
    text = prompt.strip()
    if text.startswith("Q:"):
        text = text[2:]
    if text.endswith(" A:") or text == "A:":
        text = text[: -len("A:")]
    text = text.strip()
    return text or prompt.strip()


_LETTER_ANSWER = re.compile(r"^\s*\(([A-Z])\)\s*$")
_CHOICE_LINE = re.compile(r"^\s*\(([A-Z])\)\s?(.*)$")


def pair_texts(aligned: Example, violating: Example) -> tuple[str, str, str]:
    """(question, aligned answer, violating answer) for the two-option template.

    When both answers are bare letters of a prompt that lists its own choices (CAA items:
    ``"...\n\nChoices:\n (A) yes\n (B) no\n\nAnswer:"`` with answers ``" (A)"`` / ``" (B)"``),
    the pair is built from the choices' *texts* under the question stem, so that swapping the
    options really swaps the content; otherwise the prompt's question and the answers as they are.
    """
    question = question_from_prompt(aligned.prompt)
    letters = [_LETTER_ANSWER.match(e.answer) for e in (aligned, violating)]
    if all(letters) and "\n\nChoices:\n" in question:
        stem, choices = question.split("\n\nChoices:\n", 1)
        options = {m.group(1): m.group(2).strip() for m in map(_CHOICE_LINE.match, choices.splitlines()) if m}
        texts = [options.get(m.group(1)) for m in letters]
        if all(texts):
            return stem.strip(), texts[0], texts[1]
    return question, aligned.answer, violating.answer


def caa_prompt(question: str, first: str, second: str) -> str:
    return CAA_TEMPLATE.format(question=question, first=first.strip(), second=second.strip())


def build_contrast_pairs(
    examples: Sequence[Example], model, *, n_pairs: int, seed: int = 0
) -> ContrastPairs:
    """Up to ``n_pairs`` clean/corrupted prompt pairs, one per group, groups in seeded order.

    ``model`` needs ``to_tokens(text) -> [1, pos]`` and a ``tokenizer`` (a
    ``TransformerBridge`` has both). Groups are visited in a seeded random order until
    ``n_pairs`` pairs are built; groups that give no usable pair are recorded in ``skipped``.
    Raises :class:`ScoringError` if no group gives a pair.
    """
    if n_pairs < 1:
        raise ScoringError(f"n_pairs must be at least 1; got {n_pairs}")
    token_a, token_b = (_single_token(model, letter) for letter in (LETTER_A, LETTER_B))

    by_group: dict[str, dict[int, list[Example]]] = {}
    for e in examples:
        by_group.setdefault(e.group, {ALIGNED: [], VIOLATING: []}).setdefault(e.label, []).append(e)
    group_names = list(by_group)
    rng = np.random.default_rng(seed)
    order = [group_names[i] for i in rng.permutation(len(group_names))]

    clean_rows, corrupted_rows, kept, skipped = [], [], [], []
    for group in order:
        if len(kept) == n_pairs:
            break
        aligned, violating = by_group[group].get(ALIGNED, []), by_group[group].get(VIOLATING, [])
        if not aligned or not violating:
            skipped.append(SkippedPair(group, SKIP_ONE_LABEL))
            continue
        a = aligned[int(rng.integers(len(aligned)))]
        v = violating[int(rng.integers(len(violating)))]
        question, a_text, v_text = pair_texts(a, v)
        clean = model.to_tokens(caa_prompt(question, a_text, v_text))[0]
        corrupted = model.to_tokens(caa_prompt(question, v_text, a_text))[0]
        if clean.shape != corrupted.shape:
            skipped.append(SkippedPair(group, SKIP_LENGTH))
            continue
        clean_rows.append(clean.cpu())
        corrupted_rows.append(corrupted.cpu())
        kept.append(group)

    if not kept:
        counts = dict(Counter(s.reason for s in skipped))
        raise ScoringError(
            f"no contrast pair could be built from {len(examples)} example(s) in {len(group_names)} "
            f"group(s) (skipped: {counts or 'none'}); patching needs groups with at least one aligned "
            "(label 1) and one violating (label 0) answer whose two-option prompts tokenise to equal lengths"
        )
    lengths = torch.tensor([len(r) for r in clean_rows], dtype=torch.long)
    pad = _pad_token(model)
    return ContrastPairs(
        _right_pad(clean_rows, pad), _right_pad(corrupted_rows, pad), lengths,
        token_a, token_b, tuple(kept), tuple(skipped),
    )


def scores_from_pair_effects(
    effects: Float[Tensor, "pair *module"],
    gaps: Float[Tensor, "pair"],
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
    """Per-module mean over pairs of ``effect / gap`` (the fraction of the gap restored).

    ``effects`` are ``patched - corrupted`` metric changes (measured, or estimated by
    attribution patching), ``gaps`` are ``clean - corrupted``. Pairs with ``|gap| < min_gap``
    (or a gap of exactly 0) have no meaningful fraction and are skipped and counted in
    ``meta["pairs"]["skipped"]``. Shared by activation and attribution patching so the two
    are on the same scale.
    """
    effects, gaps = effects.detach().cpu().double(), gaps.detach().cpu().double()
    keep = (gaps.abs() >= min_gap) & (gaps != 0)
    skipped = pairs.skipped + tuple(
        SkippedPair(g, SKIP_SMALL_GAP) for g, k in zip(pairs.groups, keep.tolist()) if not k
    )
    if not keep.any():
        raise ScoringError(
            f"{method}: all {len(pairs)} contrast pair(s) have a clean-corrupted metric gap below "
            f"min_gap={min_gap} logits (largest |gap| {float(gaps.abs().max()):.3g}), so the fraction "
            "restored is undefined; use more pairs (n_pairs) or a smaller min_gap"
        )
    effects, gaps = effects[keep], gaps[keep]
    fractions = effects / gaps.reshape(gaps.shape + (1,) * (effects.ndim - 1))
    n = fractions.shape[0]
    stderr = fractions.std(dim=0) / n**0.5 if n > 1 else torch.zeros_like(fractions[0])
    reasons = dict(Counter(s.reason for s in skipped))
    meta = {
        "site": site,
        "model": bank_meta.get("model"),
        "task": bank_meta.get("task"),
        "seed": seed,
        "method": method,
        "score_unit": unit,
        "config": config,
        "pairs": {
            "n_used": n,
            "n_skipped": len(skipped),
            "skipped": reasons,
            "mean_gap_logits": float(gaps.mean()),
            "metric": METRIC_DESCRIPTION,
        },
    }
    return ModuleScores(
        scores=fractions.mean(dim=0).float(),
        method=method,
        config=config,
        diagnostics={"stderr": stderr.float(), "effect_logits": effects.mean(dim=0).float()},
        meta=meta,
    )


def check_model_for_bank(bank, model, *, method: str) -> None:
    """A model is given, and it is the one the bank describes (name and module shape)."""
    recorded = bank.meta.get("model")
    if model is None:
        raise ScoringError(
            f"{method} runs the model, but model=None was given; pass the model the bank was "
            f"collected from (bank model: {recorded or 'not recorded'}), e.g. model=load_model(...)"
        )
    if recorded is not None and not _same_model(recorded, model):
        shown = recorded.get("name", recorded) if isinstance(recorded, dict) else recorded
        raise ScoringError(
            f"{method}: the bank was collected from model {shown!r} but the given model is "
            f"{sorted(_model_names(model))}; load the bank's model or collect a bank for this one"
        )
    cfg = model.cfg
    expected = (cfg.n_layers, cfg.n_heads) if bank.is_head_site else (cfg.n_layers,)
    if tuple(bank.module_shape) != tuple(expected):
        raise ScoringError(
            f"{method}: the bank has modules of shape {tuple(bank.module_shape)} at site {bank.site!r}, "
            f"but the model has {expected}; the bank belongs to another model"
        )


def _model_names(model) -> set[str]:
    identity = model_identity(model)
    names = {identity.get("name"), identity.get("hf_name"), getattr(model.cfg, "model_name", None)}
    return {n for n in names if n}


def _same_model(recorded, model) -> bool:
    names = _model_names(model)
    if isinstance(recorded, dict):
        candidates = {recorded.get(k) for k in ("name", "hf_name")} - {None}
        return not candidates or bool(candidates & names)
    return str(recorded) in names


def _single_token(model, text: str) -> int:
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ScoringError(
            f"the option letter {text!r} is {len(ids)} tokens for this tokenizer; the A/B metric "
            "needs each letter to be a single token"
        )
    return int(ids[0])


def _pad_token(model) -> int:
    """Any valid id works (padding sits after the real tokens of a causal model)."""
    tokenizer = model.tokenizer
    for pad in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if pad is not None:
            return int(pad)
    return 0


def _right_pad(rows: list[Tensor], pad: int) -> Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def score_with_pairs(bank, model, *, seed: int, cfg, effects_fn, method: str, unit: str) -> ModuleScores:
    """The body shared by the patching-style scorers: build the bank's contrast pairs, measure
    per-pair module effects with ``effects_fn`` (activation or attribution patching), normalise."""
    check_model_for_bank(bank, model, method=method)
    pairs = build_contrast_pairs(bank.examples, model, n_pairs=cfg.n_pairs, seed=seed)
    effects, gaps = effects_fn(model, pairs, site=bank.site, batch_size=cfg.batch_size, positions=cfg.positions)
    return scores_from_pair_effects(
        effects, gaps, pairs, min_gap=cfg.min_gap, method=method, unit=unit,
        site=bank.site, seed=seed, config=asdict(cfg), bank_meta=bank.meta,
    )
