"""Is a gain truth or length? The per-answer decomposition of what steering does to MC log-probs.

For a steered condition against unsteered on the same questions, every answer ``a`` of question
``q`` gets Δ = log p_steered(a | q) − log p_unsteered(a | q). Within question (question fixed
effects: every variable demeaned per question),

    Δ = β_truth · true(a) + β_len · tokens(a) + ε,

so ``β_truth`` is the nats steering adds to true answers beyond what their length predicts and
``β_len`` the nats it adds per answer token, whatever the answer says. This is the test of "truth,
not length": a steering that only shortens the model's preferences moves β_len and leaves β_truth
at 0, whereas MC2 rises for both (true TruthfulQA answers are shorter on average). Comparing MC2
with the content-blind length-only reference cannot tell them apart — it compares unlike arms.

Inference is by question (the unit the design samples): a question-cluster bootstrap CI (questions
resampled, the fit redone) and a sign-flip p on each question's contribution to β_truth,
``u_q = [(Σ_q X̃_q'X̃_q)⁻¹ X̃_q'Δ̃_q]_truth`` (Σ_q u_q = β_truth; under "no truth effect" each is as
likely ±). β is linear in Δ for a fixed design, so "method minus its null" is the fit of the
per-answer difference of their Δ's (the null's Δ: the mean over its draws).

Hand-written rather than statsmodels (not a dependency): the fit is a 2×2 solve per resample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from .paired import min_detectable_difference, sign_flip_pvalue

COEFFICIENTS = ("truth", "len")


@dataclass(frozen=True)
class Decomposition:
    """β_truth and β_len of Δ (module docstring) with question-level inference.

    ``ci_truth``: question-cluster percentile bootstrap interval of β_truth; ``p_truth``: two-sided
    sign-flip p of β_truth = 0 over the questions' contributions; ``min_detectable_truth``: the
    |β_truth| this design detects with 80 % power at two-sided 0.05 given the contributions' SD.
    ``n_questions`` counts the questions whose answers vary in truth or length (the others carry no
    information within question)."""

    beta_truth: float
    beta_len: float
    ci_truth: tuple[float, float]
    ci_len: tuple[float, float]
    p_truth: float
    min_detectable_truth: float
    n_questions: int
    n_answers: int


def question_design(groups: Sequence[str], is_true: ArrayLike, tokens: ArrayLike, delta: ArrayLike):
    """Per question: ``A_q = X̃_q'X̃_q`` [q, 2, 2] and ``b_q = X̃_q'Δ̃_q`` [q, 2], X̃ = (true, tokens) demeaned in q."""
    groups = list(groups)
    columns = [np.asarray(v, dtype=float).reshape(-1) for v in (is_true, tokens, delta)]
    if len({len(groups), *map(len, columns)}) != 1:
        raise ValueError(f"one group, truth label, token count and Δ per answer expected; found {len(groups)} groups "
                         f"and {', '.join(str(len(c)) for c in columns)} values")
    x, y = np.column_stack(columns[:2]), columns[2]
    if not np.isfinite(x).all() or not np.isfinite(y).all():
        raise ValueError("truth labels, token counts and Δ must be finite numbers")
    order = list(dict.fromkeys(groups))
    index = {g: i for i, g in enumerate(order)}
    codes = np.array([index[g] for g in groups])
    counts = np.bincount(codes, minlength=len(order)).astype(float)
    x_dm = x - (np.stack([np.bincount(codes, x[:, j], len(order)) for j in range(2)], 1) / counts[:, None])[codes]
    y_dm = y - (np.bincount(codes, y, len(order)) / counts)[codes]
    a = np.zeros((len(order), 2, 2))
    b = np.zeros((len(order), 2))
    np.add.at(a, codes, x_dm[:, :, None] * x_dm[:, None, :])
    np.add.at(b, codes, x_dm * y_dm[:, None])
    informative = np.abs(a).sum(axis=(1, 2)) > 0
    return a[informative], b[informative]


def decompose(groups: Sequence[str], is_true: ArrayLike, tokens: ArrayLike, delta: ArrayLike, *,
              n_boot: int = 2000, seed: int = 0, n_perm: int = 10000, level: float = 0.95) -> Decomposition:
    """Fit Δ = β_truth · true + β_len · tokens within question, with question-level CIs and p (module docstring)."""
    a, b = question_design(groups, is_true, tokens, delta)
    if len(a) < 2:
        raise ValueError(f"the decomposition needs at least 2 questions whose answers differ; found {len(a)}")
    total = a.sum(0)
    if abs(np.linalg.det(total)) < 1e-12 * max(1.0, float(np.abs(total).max()) ** 2):
        raise ValueError("truth and length are collinear within question (every answer of a question has the same "
                         "truth label, or length is a function of truth): β_truth and β_len cannot be told apart")
    beta = np.linalg.solve(total, b.sum(0))
    contributions = b @ np.linalg.inv(total).T  # [q, 2]: Σ_q contributions = beta
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(a), np.full(len(a), 1 / len(a)), size=n_boot).astype(float)  # question resamples
    boot_a = np.einsum("rq,qij->rij", weights, a)
    boot_b = weights @ b
    solvable = np.abs(np.linalg.det(boot_a)) > 1e-12
    boot = np.linalg.solve(boot_a[solvable], boot_b[solvable][..., None])[..., 0]
    tail = (1 - level) / 2
    ci = np.quantile(boot, [tail, 1 - tail], axis=0)
    u = contributions[:, 0]
    p, _, _ = sign_flip_pvalue(u, n_perm=n_perm, seed=seed)
    sd = float(np.std(u, ddof=1))
    mdd = len(u) * min_detectable_difference(sd, len(u)) if sd > 0 else float("nan")
    return Decomposition(beta_truth=float(beta[0]), beta_len=float(beta[1]),
                         ci_truth=(float(ci[0, 0]), float(ci[1, 0])), ci_len=(float(ci[0, 1]), float(ci[1, 1])),
                         p_truth=float(p), min_detectable_truth=mdd, n_questions=len(a), n_answers=len(groups))


def answer_deltas(steered: dict, unsteered: dict) -> np.ndarray:
    """Δ per answer between two cells' ``per_answer`` records of the same questions and answers."""
    for key in ("group", "answer"):
        if list(steered[key]) != list(unsteered[key]):
            raise ValueError(f"the two conditions were evaluated on different answers ({key} differs); compare cells "
                             "of the same test questions")
    return np.asarray(steered["logprob"], dtype=float) - np.asarray(unsteered["logprob"], dtype=float)
