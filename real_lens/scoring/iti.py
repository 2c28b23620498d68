"""ITI baseline: a linear probe per module; its validation accuracy is the module's score.

As in Inference-Time Intervention (Li et al., 2023): per module (head or layer), a
scikit-learn logistic regression is fitted on the train examples' activations and scored by
its accuracy on the validation examples. The train/val split is by group (question), seeded,
80/20 by default, so no question is on both sides. The probe's validation ROC-AUC is kept in
``diagnostics["val_auc"]`` so the two rankings can be compared, and it breaks ties of accuracy
(``meta["tie_break"]``, :attr:`~real_lens.scoring.ModuleScores.tie_break`): on a small task many
probes reach the same accuracy, and index order would pick the first layers.

Features are standardised with the train statistics (a per-dimension affine map, which does
not change what a logistic regression can separate; lbfgs just converges faster).

Speed: one sklearn lbfgs fit per module. Measured on 2 CPU cores (benchmarks/bench_scorers.py),
270 modules x 3,000 examples x 64 dims takes 5 s in all (up to ~20 s when other jobs share
the cores), so a batched torch solver over a module axis would save seconds at the price of
re-implementing a solver; sklearn it is. (Very small banks can be slower than large ones:
separable data keeps lbfgs iterating to ``max_iter``.)
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from typing import Collection, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import ScoringError
from .registry import register_scorer
from .scores import ModuleScores

METHOD = "iti"
SCORE_UNIT = "probe validation accuracy"


@dataclass(frozen=True)
class ProbeConfig:
    """``val_fraction`` of the groups (questions) validate; ``C`` and ``max_iter`` as in sklearn."""

    val_fraction: float = 0.2
    C: float = 1.0
    max_iter: int = 1000
    standardize: bool = True

    def __post_init__(self):
        if not 0 < self.val_fraction < 1:
            raise ScoringError(f"val_fraction must be between 0 and 1 (exclusive); got {self.val_fraction}")
        if not self.C > 0:
            raise ScoringError(f"C (inverse regularisation strength) must be > 0; got {self.C}")
        if self.max_iter < 1:
            raise ScoringError(f"max_iter must be at least 1; got {self.max_iter}")


def split_groups(groups: Sequence[str], *, val_fraction: float, seed: int) -> tuple[frozenset[str], frozenset[str]]:
    """Seeded group-wise split: ``(train groups, val groups)``, at least one group in each."""
    distinct = list(dict.fromkeys(groups))
    if len(distinct) < 2:
        raise ScoringError(
            f"the probe needs at least 2 groups (questions) to split train/val by group; found "
            f"{len(distinct)}; use a bank with more questions"
        )
    order = [distinct[i] for i in np.random.default_rng(seed).permutation(len(distinct))]
    n_val = min(len(distinct) - 1, max(1, round(val_fraction * len(distinct))))
    return frozenset(order[n_val:]), frozenset(order[:n_val])


def score_probe(
    acts: Float[Tensor, "example layer *module d"],
    labels: Int[Tensor, "example"],
    groups: Sequence[str],
    *,
    cfg: ProbeConfig = ProbeConfig(),
    seed: int = 0,
    val_groups: Collection[str] | None = None,
    modules: Collection[int] | None = None,
    progress: bool = False,
) -> ModuleScores:
    """One logistic-regression probe per module; score = validation accuracy.

    ``val_groups`` fixes the validation groups (all others train); otherwise they are drawn
    with :func:`split_groups`. Model-free: works on any activation tensor.
    ``modules``: fit only these flat (layer-major) module indices; the others are NaN
    (:func:`real_lens.distributed.score_distributed` gives each process a slice).
    """
    if acts.ndim not in (3, 4):
        raise ScoringError(
            f"activations must be [example, layer, head, d_head] or [example, layer, d_model]; "
            f"found shape {tuple(acts.shape)}"
        )
    if len(groups) != acts.shape[0] or labels.shape != (acts.shape[0],):
        raise ScoringError(
            f"need one label and one group per example ({acts.shape[0]}); found {tuple(labels.shape)} "
            f"labels and {len(groups)} groups"
        )
    y = labels.cpu().numpy().astype(np.int64)
    if not set(np.unique(y)) <= {0, 1}:
        raise ScoringError(f"labels must be 0 (violating) or 1 (aligned); found {sorted(set(np.unique(y)))}")
    if val_groups is None:
        _, val_set = split_groups(groups, val_fraction=cfg.val_fraction, seed=seed)
    else:
        val_set = frozenset(val_groups)
    is_val = np.array([g in val_set for g in groups])
    train, val = ~is_val, is_val
    for name, part in (("train", train), ("val", val)):
        classes = set(np.unique(y[part]))
        if classes != {0, 1}:
            raise ScoringError(
                f"the probe's {name} part ({int(part.sum())} examples) has labels {sorted(classes)}; "
                "it needs both aligned (1) and violating (0) examples; use more groups"
            )

    module_shape = tuple(acts.shape[1:-1])
    x = acts.reshape(acts.shape[0], -1, acts.shape[-1]).detach().cpu().double().numpy()
    n_modules = x.shape[1]
    fitted = range(n_modules) if modules is None else sorted(set(modules))
    if fitted and not 0 <= min(fitted) <= max(fitted) < n_modules:
        raise ScoringError(f"modules must be indices in [0, {n_modules}); found {min(fitted)}..{max(fitted)}")
    accuracy, auc, train_accuracy, converged = (np.full(n_modules, np.nan) for _ in range(4))
    for m in tqdm(fitted, desc="ITI probes", unit="module", disable=not progress):
        x_train, x_val = x[train, m], x[val, m]
        if cfg.standardize:
            mean, std = x_train.mean(0), x_train.std(0)
            std[std == 0] = 1.0
            x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
        probe = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            probe.fit(x_train, y[train])
        converged[m] = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        accuracy[m] = probe.score(x_val, y[val])
        train_accuracy[m] = probe.score(x_train, y[train])
        auc[m] = roc_auc_score(y[val], probe.decision_function(x_val))

    def as_scores(values: np.ndarray) -> Tensor:
        return torch.from_numpy(values).float().reshape(module_shape)

    n_train_groups = len({g for g, v in zip(groups, is_val) if not v})
    return ModuleScores(
        scores=as_scores(accuracy),
        method=METHOD,
        config=asdict(cfg),
        # Per module, so the result of a module slice is a slice of the whole result.
        diagnostics={
            "val_auc": as_scores(auc), "train_accuracy": as_scores(train_accuracy), "converged": as_scores(converged),
        },
        meta={
            "seed": seed,
            "method": METHOD,
            "score_unit": SCORE_UNIT,
            # Val accuracy ties easily (dozens of heads at 1.000 on 20 questions): the val AUC orders tied modules.
            "tie_break": "val_auc",
            "config": asdict(cfg),
            "split": {
                "n_train_examples": int(train.sum()),
                "n_val_examples": int(val.sum()),
                "n_train_groups": n_train_groups,
                "n_val_groups": len(set(groups)) - n_train_groups,
            },
        },
    )


@register_scorer(METHOD, config=ProbeConfig, shardable=True, progress=True)
def probe_scorer(
    bank, *, model=None, seed: int = 0, device=None, cfg: ProbeConfig | None = None,
    modules: Collection[int] | None = None, progress: bool = True,
) -> ModuleScores:
    """Registry entry: probes on the bank's activations (model-free; ``model``/``device`` unused)."""
    scores = score_probe(bank.acts, bank.labels, bank.groups, cfg=cfg or ProbeConfig(), seed=seed, modules=modules,
                         progress=progress)
    meta = {"site": bank.site, "model": bank.meta.get("model"), "task": bank.meta.get("task"), **scores.meta}
    return replace(scores, meta=meta)
