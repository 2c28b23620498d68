"""Dose calibration: the steering strength α at which a steering reaches a target KL.

Methods compared at one α can sit at very different side-effect doses; comparing them at the
same KL(unsteered ‖ steered) per token on ordinary text removes that confound. For a
steering and a target KL, :func:`calibrate_alpha` finds α (α > 0, on a log scale) such that
the mean KL per token on *calibration* paragraphs is within ``tol`` (relative) of the target.
The KL reported for a cell must come from other paragraphs (:func:`split_texts`), so the
reported dose is held out from the one that chose α.

Search: from ``alpha_start``, α moves one way until the KL crosses the target (the bracket
phase), clamped to ``[alpha_min, alpha_max]``. Each bracket step aims at the target along
KL ∝ α^p, with p = 2 for the first step (the small-α law) and afterwards the slope in (log α,
log KL) of the last two points, p kept within [1/2, 4]; a step moves α by at least ``growth``^(1/8)
and at most ``growth``^4, and by ``growth`` where the KL is 0 (no slope to follow). On SmolLM2
(`run --quick`: 2 heads, α 10–33 from a start of 1) a calibration took a median of 3 evaluations
in all where doubling took 7.
Inside the bracket each step tries the point that a straight line through the two ends in
(log α, log KL) puts at the target (KL ∝ α² for small α, so this is nearly exact; kept 5 % of
the bracket away from its ends), and bisects in log α instead whenever the two steps before
did not halve the bracket, so its log-width at least halves every three steps whatever the curve.
(Measured on SmolLM2-135M-Instruct, 16 random heads, 16 WikiText-2 paragraphs: doubling α from 1
to 2 to 4 multiplied the KL by 4.2 and 4.5; targets 0.1 and 0.3 were met to 5 % in 3–5
evaluations, and the held-out KL on 32 other paragraphs was within 6 % of the calibration KL.)
The bracket always holds one end below and one above the target, and KL is continuous in α,
so the search ends at a crossing even where KL is not monotone in α (then it is the crossing
inside the first bracket found; ``monotone`` in the result says whether the evaluated points
were in order). Nothing is hidden: a target KL not reached at ``alpha_max``, one already
exceeded at ``alpha_min``, or a tolerance not met within ``max_steps`` evaluations gives
``reached=False`` with the best point evaluated and the whole trace.

The unsteered model's next-token log-probs on the calibration texts are computed once
(:func:`prepare_kl_reference`) and reused by every evaluation — and by every steering
calibrated on the same texts, when the caller passes the reference in. They take
4 · n_tokens · d_vocab bytes (SmolLM2's vocabulary is 49,152 tokens: 16 WikiText-2 paragraphs cut
to 128 tokens are 1,526 predicted tokens, 286 MiB).

    calibration, report = split_texts(texts, 32, seed=0)
    reference = prepare_kl_reference(model, calibration)
    dose = calibrate_alpha(model, steering, calibration, 0.1, reference=reference)
    held_out = evaluate_side_effects(model, report, steering=steering.with_alpha(dose.alpha))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .forward import masked_sum, steering_context, target_logprobs
from ..tokens import right_pad, tokenize
from .side_effects import SideEffects, load_wikitext_sample

REASONS = ("reached", "above_alpha_max", "below_alpha_min", "max_steps")
DEFAULT_ALPHA_START = 1.0
# The main job's calibration settings (and :func:`calibrate`'s): the KL within 5 % of its target, α in (0.01, 100].
CALIBRATION = dict(tol=0.05, alpha_min=0.01, alpha_max=100.0)
# The main job's WikiText-2 draw: paragraphs that report CE/KL, others held apart that calibrate α, their length.
N_REPORT_TEXTS, N_CALIBRATION_TEXTS, TEXT_TOKENS = 20, 8, 128


@dataclass(frozen=True)
class DoseCalibration:
    """The α chosen for ``target_kl`` and how it was found.

    ``alpha``, ``kl``, ``ce``: the evaluated point closest to the target (relative error), with its
    calibration KL and CE (nats per token). ``reached``: that KL is within ``tol`` of the target.
    ``reason``: ``"reached"``; ``"above_alpha_max"`` (the KL at ``alpha_max`` is still below the
    target); ``"below_alpha_min"`` (the KL at ``alpha_min`` is already above it); or
    ``"max_steps"`` (``max_steps`` evaluations ran out before a KL came within ``tol``).
    ``trace``: every evaluated ``(alpha, kl)`` in order; the first ``n_bracket`` are the bracket
    phase (α moving one way only). ``monotone``: KL is non-decreasing in α over the trace.
    """

    alpha: float
    kl: float
    ce: float
    target_kl: float
    tol: float
    reached: bool
    reason: str
    n_evaluations: int
    n_bracket: int
    monotone: bool
    trace: tuple[tuple[float, float], ...]

    def __post_init__(self):
        if self.reason not in REASONS:
            raise ValueError(f"unknown calibration reason {self.reason!r}; expected one of: {', '.join(REASONS)}")
        if self.reached != (self.reason == "reached"):
            raise ValueError(f"reached={self.reached} contradicts reason {self.reason!r}")
        if len(self.trace) != self.n_evaluations or not 1 <= self.n_bracket <= self.n_evaluations:
            raise ValueError(
                f"a calibration with {self.n_evaluations} evaluations needs as many trace points and "
                f"1..{self.n_evaluations} bracket points; found {len(self.trace)} and {self.n_bracket}"
            )


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class _ReferenceBatch:
    tokens: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pred"]  # real predicted tokens (pred = pos − 1)
    logprobs: Float[Tensor, "token vocab"]  # unsteered log-probs at the real predicted tokens, in mask order


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class KLReference:
    """The unsteered model's next-token log-probs on ``texts`` (each cut to ``max_tokens`` tokens),
    batched exactly as :func:`~real_lens.evaluation.side_effects.evaluate_side_effects` batches them."""

    texts: tuple[str, ...]
    max_tokens: int
    batch_size: int
    batches: tuple[_ReferenceBatch, ...]

    @property
    def n_tokens(self) -> int:
        return sum(int(b.mask.sum()) for b in self.batches)


def split_texts(texts: Sequence[str], n_calibration: int, *, seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint ``(calibration, report)`` paragraphs: ``n_calibration`` distinct texts drawn with
    ``default_rng(seed)`` for choosing α, and every other distinct text for reporting CE/KL.

    Repeated texts are dropped first (keeping the first), so no paragraph is on both sides;
    WikiText-2's test split holds 17 repeated paragraphs. Both parts keep the input order.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, found a single string; wrap it in a list")
    distinct = list(dict.fromkeys(texts))
    if not 1 <= n_calibration < len(distinct):
        raise ValueError(
            f"n_calibration must be between 1 and the number of distinct texts minus one ({len(distinct) - 1}), "
            f"so that both parts are non-empty; got {n_calibration}"
        )
    chosen = set(np.random.default_rng(seed).choice(len(distinct), size=n_calibration, replace=False).tolist())
    calibration = [t for i, t in enumerate(distinct) if i in chosen]
    report = [t for i, t in enumerate(distinct) if i not in chosen]
    return calibration, report


def prepare_kl_reference(model, texts: Sequence[str], *, max_tokens: int = 128, batch_size: int = 8) -> KLReference:
    """Run the unsteered model once over ``texts`` and keep its log-probs (4 · n_tokens · d_vocab bytes)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, found a single string; wrap it in a list")
    if max_tokens < 2 or batch_size < 1:
        raise ValueError(f"max_tokens must be >= 2 and batch_size >= 1; got {max_tokens} and {batch_size}")
    seqs = [tokenize(model, t)[:max_tokens] for t in texts]
    seqs = sorted((s for s in seqs if len(s) >= 2), key=len)  # as evaluate_side_effects: little padding
    if not seqs:
        raise ValueError("no text has a token to predict (each needs at least 2 tokens with BOS); pass non-empty texts")
    batches = []
    with torch.inference_mode():
        for start in range(0, len(seqs), batch_size):
            batch = seqs[start:start + batch_size]
            tokens = right_pad(model, batch).to(model.cfg.device)
            lengths = torch.tensor([len(s) for s in batch])
            mask = (torch.arange(1, tokens.shape[1])[None, :] < lengths[:, None]).to(tokens.device)
            logits = model(tokens, use_cache=False)[:, :-1]
            batches.append(_ReferenceBatch(tokens, mask, logits.float().log_softmax(-1)[mask]))
    return KLReference(tuple(texts), max_tokens, batch_size, tuple(batches))


def evaluate_kl(model, reference: KLReference, *, steering=None) -> SideEffects:
    """CE of the steered model and KL(unsteered ‖ steered) per token on the reference's texts,
    from one steered pass per batch (the unsteered pass is the reference's)."""
    if not isinstance(reference, KLReference):
        raise TypeError(f"reference must be a KLReference from prepare_kl_reference; found {type(reference).__name__}")
    ce_sum = kl_sum = 0.0
    n_tokens = 0
    with steering_context(model, steering), torch.inference_mode():
        for batch in reference.batches:
            steered = model(batch.tokens, use_cache=False)[:, :-1]
            ce_sum += float(-masked_sum(target_logprobs(steered, batch.tokens[:, 1:]), batch.mask).sum())
            log_q = steered.float().log_softmax(-1)[batch.mask.to(steered.device)]
            log_p = batch.logprobs.to(log_q.device)
            kl_sum += float((log_p.exp() * (log_p - log_q)).sum(-1).double().sum())  # exactly 0 where equal
            n_tokens += int(batch.mask.sum())
    return SideEffects(ce=ce_sum / n_tokens, kl=kl_sum / n_tokens)


def calibrate_alpha(
    model,
    steering,
    texts: Sequence[str],
    target_kl: float,
    *,
    tol: float = 0.05,
    alpha_min: float = 0.01,
    alpha_max: float = 100.0,
    alpha_start: float | None = None,
    growth: float = 2.0,
    max_steps: int = 20,
    max_tokens: int = 128,
    batch_size: int = 8,
    reference: KLReference | None = None,
) -> DoseCalibration:
    """The α in ``[alpha_min, alpha_max]`` at which ``steering.with_alpha(α)`` has mean
    KL(unsteered ‖ steered) per token on ``texts`` within ``tol · target_kl`` of ``target_kl``.

    ``steering``: anything with ``with_alpha(α)`` returning a steering (``real_lens.steering.Steering``);
    its own α is ignored. ``alpha_start``: the first α tried (default 1, moved into the range);
    starting near the answer (e.g. the α found for a neighbouring target) saves bracket steps.
    ``reference``: the unsteered log-probs of ``texts`` from
    :func:`prepare_kl_reference` (same ``max_tokens`` and ``batch_size``), to share across
    calibrations on the same texts; built here when ``None``. ``max_steps``: evaluations in all.
    The search is deterministic: the same inputs give the same α.
    """
    if not callable(getattr(steering, "with_alpha", None)):
        raise TypeError(
            f"steering must have with_alpha(alpha) (a real_lens.steering.Steering); found {type(steering).__name__}"
        )
    _check_search(target_kl, tol, alpha_min, alpha_max, _start(alpha_start, alpha_min, alpha_max), growth, max_steps)
    if reference is None:
        reference = prepare_kl_reference(model, texts, max_tokens=max_tokens, batch_size=batch_size)
    elif (reference.texts, reference.max_tokens, reference.batch_size) != (tuple(texts), max_tokens, batch_size):
        raise ValueError(
            "reference was prepared on other texts or settings than this calibration "
            f"(max_tokens {reference.max_tokens} vs {max_tokens}, batch_size {reference.batch_size} vs {batch_size}, "
            f"{len(reference.texts)} vs {len(texts)} texts); prepare it with prepare_kl_reference(model, texts, ...)"
        )
    return search_alpha(
        lambda alpha: evaluate_kl(model, reference, steering=steering.with_alpha(alpha)), target_kl,
        tol=tol, alpha_min=alpha_min, alpha_max=alpha_max, alpha_start=alpha_start, growth=growth, max_steps=max_steps,
    )


def search_alpha(
    evaluate: Callable[[float], SideEffects],
    target_kl: float,
    *,
    tol: float = 0.05,
    alpha_min: float = 0.01,
    alpha_max: float = 100.0,
    alpha_start: float | None = None,
    growth: float = 2.0,
    max_steps: int = 20,
) -> DoseCalibration:
    """The search of :func:`calibrate_alpha` (module docstring) over any ``evaluate(α) -> SideEffects``; model-free."""
    alpha_start = _start(alpha_start, alpha_min, alpha_max)
    _check_search(target_kl, tol, alpha_min, alpha_max, alpha_start, growth, max_steps)
    points: list[tuple[float, SideEffects]] = []

    def kl_at(alpha: float) -> float:
        points.append((alpha, evaluate(alpha)))
        return points[-1][1].kl

    def within(kl: float) -> bool:
        return abs(kl - target_kl) <= tol * target_kl

    def result(reason: str, n_bracket: int) -> DoseCalibration:
        if reason == "reached":
            alpha, side = points[-1]
        else:
            alpha, side = min(points, key=lambda p: abs(p[1].kl / target_kl - 1))
        by_alpha = sorted((a, s.kl) for a, s in points)
        return DoseCalibration(
            alpha=float(alpha), kl=side.kl, ce=side.ce, target_kl=float(target_kl), tol=float(tol),
            reached=reason == "reached", reason=reason, n_evaluations=len(points), n_bracket=n_bracket,
            monotone=all(k1 <= k2 for (_, k1), (_, k2) in zip(by_alpha, by_alpha[1:])),
            trace=tuple((float(a), s.kl) for a, s in points),
        )

    # Bracket: move α one way, aiming at the target along KL ∝ α^p, until the KL crosses it.
    alpha = alpha_start
    kl = kl_at(alpha)
    up = kl < target_kl
    while not within(kl) and (kl < target_kl) == up:
        limit = alpha_max if up else alpha_min
        if alpha == limit:
            return result("above_alpha_max" if up else "below_alpha_min", len(points))
        if len(points) == max_steps:
            return result("max_steps", len(points))
        step = _bracket_step(points, target_kl, growth)
        alpha = min(alpha * step, alpha_max) if up else max(alpha / step, alpha_min)
        kl = kl_at(alpha)
    n_bracket = len(points)
    if within(kl):
        return result("reached", n_bracket)
    (a1, s1), (a2, s2) = points[-2], points[-1]
    (lo, k_lo), (hi, k_hi) = sorted([(a1, s1.kl), (a2, s2.kl)])  # k_lo < target < k_hi by construction

    # Refine: interpolate in (log α, log KL), kept 5% of the width away from either end; bisect in
    # log α instead when the last two steps did not halve the bracket (or KL at the low end is 0).
    widths: list[float] = []
    while len(points) < max_steps:
        x_lo, x_hi = math.log(lo), math.log(hi)
        width = x_hi - x_lo
        x = x_lo + width / 2
        if k_lo > 0 and not (len(widths) >= 2 and width > widths[-2] / 2):
            guess = x_lo + (math.log(target_kl) - math.log(k_lo)) * width / (math.log(k_hi) - math.log(k_lo))
            x = min(max(guess, x_lo + 0.05 * width), x_hi - 0.05 * width)
        widths.append(width)
        alpha = math.exp(x)
        kl = kl_at(alpha)
        if within(kl):
            return result("reached", n_bracket)
        if kl < target_kl:
            lo, k_lo = alpha, kl
        else:
            hi, k_hi = alpha, kl
    return result("max_steps", n_bracket)


def _bracket_step(points: list[tuple[float, SideEffects]], target_kl: float, growth: float) -> float:
    """The factor (> 1) the next bracket step moves α by: onto the target along KL ∝ α^p (p = 2, or the
    slope of the last two points), within [growth^(1/8), growth^4]; ``growth`` where the KL is 0."""
    alpha, kl = points[-1][0], points[-1][1].kl
    if kl <= 0:
        return growth
    power = 2.0
    if len(points) >= 2 and points[-2][1].kl > 0 and points[-2][0] != alpha:
        power = math.log(kl / points[-2][1].kl) / math.log(alpha / points[-2][0])
        power = min(max(power, 0.5), 4.0)
    log_step = abs(math.log(target_kl / kl)) / power
    return math.exp(min(max(log_step, math.log(growth) / 8), 4 * math.log(growth)))


def _start(alpha_start: float | None, alpha_min: float, alpha_max: float) -> float:
    """``alpha_start``, or 1 moved into ``[alpha_min, alpha_max]`` when it is None."""
    return min(max(DEFAULT_ALPHA_START, alpha_min), alpha_max) if alpha_start is None else alpha_start


def _check_search(target_kl, tol, alpha_min, alpha_max, alpha_start, growth, max_steps) -> None:
    if not (target_kl > 0 and math.isfinite(target_kl)):
        raise ValueError(f"target_kl must be a finite KL > 0 in nats per token (e.g. 0.1); got {target_kl}")
    if not 0 < tol < 1:
        raise ValueError(f"tol is relative to target_kl and must be between 0 and 1 (e.g. 0.05); got {tol}")
    if not 0 < alpha_min <= alpha_start <= alpha_max < math.inf:
        raise ValueError(
            "need 0 < alpha_min <= alpha_start <= alpha_max < inf (α is searched on a log scale); "
            f"got alpha_min={alpha_min}, alpha_start={alpha_start}, alpha_max={alpha_max}"
        )
    if not growth > 1:
        raise ValueError(f"growth sets the bracket's step factors and must be > 1 (e.g. 2); got {growth}")
    if max_steps < 1:
        raise ValueError(f"max_steps counts evaluations and must be at least 1; got {max_steps}")


def held_apart_texts(data_dir=None, *, n_report: int = N_REPORT_TEXTS, n_calibration: int = N_CALIBRATION_TEXTS,
                     max_tokens: int = TEXT_TOKENS, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(report, calibration)`` WikiText-2 paragraphs as the main job draws them: ``n_report`` that report
    CE/KL and ``n_calibration`` others that choose α, drawn together and split by :func:`split_texts`, so no
    paragraph is on both sides and a reported KL is held out from the one α was calibrated on."""
    n = n_report + n_calibration
    if not n:
        return [], []
    texts = load_wikitext_sample(data_dir, n=n, max_tokens=max_tokens, seed=seed)
    if not n_calibration:
        return texts, []
    if not n_report:
        return [], texts
    calibration, report = split_texts(texts, n_calibration, seed=seed)
    return report, calibration


def calibrate(model, steering, *, kl: float, texts: Sequence[str] | None = None, data_dir=None,
              max_tokens: int = TEXT_TOKENS, seed: int = 0):
    """``steering`` at the α where KL(unsteered ‖ steered) per token reaches ``kl`` nats — the main job's dose.

    ``texts``: the paragraphs that choose α; default: the main job's 8 held-apart WikiText-2 paragraphs
    (:func:`held_apart_texts`, from ``data_dir``), so a steering calibrated here gets the α the job would
    give it. The search is :func:`calibrate_alpha` with the job's settings (:data:`CALIBRATION`). The
    calibration is recorded in the returned steering's ``meta["calibration"]``; a target it could not
    reach is said on stderr, and the steering is then at the closest point evaluated."""
    from dataclasses import asdict, replace

    from ..io import notice

    if callable(getattr(steering, "check_model", None)):
        steering.check_model(model)  # before any forward pass
    if texts is None:
        _, texts = held_apart_texts(data_dir, max_tokens=max_tokens, seed=seed)
    result = calibrate_alpha(model, steering, texts, kl, max_tokens=max_tokens, **CALIBRATION)
    if not result.reached:
        notice(f"the KL target {kl:g} was not reached ({result.reason}); steering at the closest point, "
               f"α {result.alpha:.3g} with KL {result.kl:.3g}")
    record = {k: v for k, v in asdict(result).items() if k != "trace"}
    return replace(steering.with_alpha(result.alpha), meta={**steering.meta, "calibration": record})

