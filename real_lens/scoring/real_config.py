"""REAL's configuration (:class:`RealConfig`) and what separates the described method from the release.

:data:`RELEASE_DIFFERENCES` lists every difference between ``variant="described"`` (METHOD.md §3)
and ``variant="release"`` (the authors' code, §3a) with why it matters; summary.md prints it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import ScoringError

VARIANTS = ("described", "release")
METHOD_NAMES = {"described": "real", "release": "real-release"}  # each variant's scorer name
HELDOUT_SPLITS = ("group", "answer")

# (difference, why it matters): the release variant against the described one (METHOD.md §3a).
RELEASE_DIFFERENCES: tuple[tuple[str, str], ...] = (
    (
        "Prior: the release trains ONE GRU prior, on 80 % of the aligned answers only; the described method "
        "trains one per class and scores their log-likelihood ratio.",
        "Without a violating prior the score says how typical a code sequence is of aligned answers, not what "
        "separates aligned from violating ones.",
    ),
    (
        "Prior input: the release's GRU reads code t itself at step t and is scored on code t (no start token, "
        "no shift); the described prior predicts code t from codes < t.",
        "A prior that sees the code it predicts learns to copy it, so the score reduces to whether each code "
        "occurred among the aligned training codes; how codes go together no longer counts.",
    ),
    (
        "Score: the release uses the float32 sequence probability exp(Σ_t log p(code_t)); the described method "
        "uses the mean-per-position log-likelihood ratio.",
        "The AUC only ranks, so this equals ranking by Σ log p, except that float32 underflows to 0 below "
        "Σ log p ≈ -104 and ties those examples (reproduced, and counted in diagnostic 'underflow').",
    ),
    (
        "Held-out set: the release holds out a random 20 % of the aligned answers and the FIRST as many violating "
        "answers in bank order, split per answer; the described method holds out 20 % of the questions.",
        "Answers of one question share its prompt, so a question ends up on both sides of the split, and the "
        "violating held-out answers all come from the first questions of the bank, not a random sample.",
    ),
    (
        "EMA codebook: the release starts the running sums as a copy of the N(0, 1) codebook and the counts at 0, "
        "without bias correction; the described method (Sonnet 2) starts both at 0 and debiases.",
        "An entry the first minibatch does not choose is divided by ~eps, lands ~1e5 times its initial value and "
        "is not chosen again until decay^t shrinks it back (~1,146 updates at 0.99): until then a module has only "
        "the codes its first minibatches hit, often one, which scores every held-out example alike (AUC 0.5).",
    ),
    (
        "SupCon: the release's positive set holds the anchor itself (its denominator leaves it out; every anchor "
        "counts; 1e-6 added to the log and to the positive count); the described one leaves the anchor out.",
        "The anchor's own term pushes every other example away from it, positives included, and lets the loss go "
        "negative; at weight 1e-3 it moves the codes little.",
    ),
    (
        "VQ-AE layers: the release's linear layers (utils.py build_mlp) have no bias; the described VQ-AE has "
        "biases. (Not in METHOD.md §3a; found in the release code.)",
        "A bias-free encoder is positively homogeneous, E(c·x) = c·E(x), so codes are cut around the origin of "
        "the activation space instead of around the data, which for offset activations changes which codes exist.",
    ),
    (
        "Prior training: no gradient clipping in the release; the described prior clips each module's gradient "
        "norm at 1.0.",
        "Changes how the prior trains (large early steps), not what it models.",
    ),
)

# (release setting, why neither variant follows it).
RELEASE_SETTINGS_NOT_FOLLOWED: tuple[tuple[str, str], ...] = (
    (
        "The README's entry point validation/OneForAll.py scores differently from utils.py's get_top_heads_vq "
        "(whose path METHOD.md §3a and the release variant follow): two priors, mean-per-position log-likelihood "
        "ratio, gradient clip 1.0, biased MLPs, SupCon positives without the anchor (but the anchor in the "
        "denominator) — yet the same copy-input GRU, undebiased EMA and per-answer split, with a balanced "
        "held-out set (the first n of each class's shuffled 20 %).",
        "Apart from its SupCon denominator it is the described method plus three release behaviours the release "
        "variant already isolates (copy input, EMA, per-answer split), so a third variant would add little.",
    ),
    (
        "VQ-AE epochs: 50 in utils.py's get_top_heads_vq, 30 by default in OneForAll.py (20 in its README "
        "command); GRU prior epochs: 6 in both code defaults (10 in the README command).",
        "Both variants use METHOD.md §3's 20 and 10, so they differ only in the listed behaviours.",
    ),
    (
        "Collapse rule: perplexity averaged over minibatches, counted over all epochs (not consecutive ones), "
        "threshold 0.2 / patience 25 in utils.py and 0.0 / 30 in OneForAll.py.",
        "Both variants use the threshold 0 of METHOD.md §3 (never collapse), which is what OneForAll.py does.",
    ),
    (
        "Mixed precision: utils.py trains the prior under fp16 autocast with a GradScaler whenever CUDA is present.",
        "We train in float32 on every device so that CPU and GPU results agree and batched equals one module "
        "at a time.",
    ),
    (
        "Seeding: utils.py draws its splits, initialisations and minibatch orders from the unseeded global RNG "
        "of each worker process; OneForAll.py seeds each head from (seed, layer, head), so every head has its "
        "own held-out split.",
        "We seed each module from (seed, module, stage) and hold out the same examples for every module, so "
        "modules are compared on the same data and a score does not depend on the process that computed it.",
    ),
    (
        "Models and data: rankings bundled for LLaMA-2 7B / 13B-chat and Qwen2.5-7B (32×32, 40×40, 28×28 heads, "
        "d_head 128), features read from features/{model}_tqa_mc2_head_wise.npy, K = 48 heads and α = 15 by "
        "default.",
        "We score SmolLM2-135M-Instruct (30×9 heads, d_head 64) from our own banks on the same seed-42 fold "
        "CSVs, and choose K and α on the validation split.",
    ),
)
Variant = Literal["described", "release"]


@dataclass(frozen=True)
class RealConfig:
    """REAL hyper-parameters; the defaults are the paper's described method (METHOD.md §3).

    ``variant="release"`` reproduces the authors' code instead (METHOD.md §3a,
    :data:`RELEASE_DIFFERENCES`): it splits per answer (``heldout_split`` resolves to
    ``"answer"``), does not clip the prior's gradient (``prior_grad_clip`` resolves to None),
    and ignores the violating prior's settings because it trains none.
    """

    variant: Variant = "described"

    # VQ-AE
    n_codes: int = 32  # METHOD.md's codebook size K (entries of the one codebook); not the number of kept heads
    n_groups: int = 8  # U: code groups per example = length of the code sequence
    code_dim: int | None = None  # b; None = d/2
    beta: float = 0.25  # commitment weight
    supcon_weight: float = 1e-3  # lambda
    temperature: float = 0.07  # SupCon temperature
    lr: float = 1e-3  # Adam
    batch_size: int = 32
    vq_epochs: int = 20
    leaky_slope: float = 0.01
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    collapse_threshold: float = 0.0  # perplexity/K below this ... (0 = never collapse, as released)
    collapse_patience: int = 5  # ... for more than this many consecutive epochs -> score 0
    # prior
    prior_embed: int = 64
    prior_hidden: int = 64
    prior_lr: float = 1e-3  # AdamW
    prior_weight_decay: float = 0.01
    prior_grad_clip: float | None = None  # per module; None: 1.0 (described) or no clipping (release)
    prior_epochs: int = 10
    prior_batch_size: int = 32
    heldout_split: str | None = None  # "group" (by question) or "answer"; None: "group" (described), "answer" (release)
    heldout_fraction: float = 0.2
    # execution (does not change results)
    module_chunk: int | None = None  # modules trained together; None: 64 on CPU (cache-sized), 1024 elsewhere
    eval_batch: int = 256  # examples per slice when encoding / scoring without gradients

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ScoringError(f"RealConfig.variant must be one of {VARIANTS}; found {self.variant!r}")
        release = self.variant == "release"
        # Resolve the variant-dependent defaults (a frozen dataclass sets fields this way).
        if self.heldout_split is None:
            object.__setattr__(self, "heldout_split", "answer" if release else "group")
        if self.prior_grad_clip is None and not release:
            object.__setattr__(self, "prior_grad_clip", 1.0)
        if release and self.heldout_split != "answer":
            raise ScoringError(
                f"RealConfig(variant='release') holds out per answer, as the release does; found "
                f"heldout_split={self.heldout_split!r}. Leave heldout_split unset, or use variant='described'"
            )
        if release and self.prior_grad_clip is not None:
            raise ScoringError(
                f"RealConfig(variant='release') does not clip the prior's gradient, as the release does not; found "
                f"prior_grad_clip={self.prior_grad_clip!r}. Leave prior_grad_clip unset, or use variant='described'"
            )
        positive_ints = (
            "n_codes", "n_groups", "batch_size", "vq_epochs", "prior_embed", "prior_hidden",
            "prior_epochs", "prior_batch_size", "eval_batch",
        ) + (("module_chunk",) if self.module_chunk is not None else ())
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ScoringError(f"RealConfig.{name} must be a positive integer; found {value!r}. Pass e.g. {name}=1 or more")
        for name in ("beta", "supcon_weight", "prior_weight_decay", "collapse_threshold"):
            if not getattr(self, name) >= 0:
                raise ScoringError(f"RealConfig.{name} must be >= 0; found {getattr(self, name)!r}")
        for name in ("temperature", "lr", "prior_lr", "ema_eps") + (() if release else ("prior_grad_clip",)):
            if not getattr(self, name) > 0:
                raise ScoringError(f"RealConfig.{name} must be > 0; found {getattr(self, name)!r}")
        if not 0 <= self.ema_decay < 1:
            raise ScoringError(f"RealConfig.ema_decay must be in [0, 1); found {self.ema_decay!r} (the release uses 0.99)")
        if not isinstance(self.collapse_patience, int) or self.collapse_patience < 0:
            raise ScoringError(f"RealConfig.collapse_patience must be an integer >= 0; found {self.collapse_patience!r}")
        if self.code_dim is not None and (self.code_dim < 1 or self.code_dim % self.n_groups):
            raise ScoringError(
                f"RealConfig.code_dim must be a positive multiple of n_groups={self.n_groups}; found {self.code_dim}. "
                "Pick code_dim divisible by n_groups, or leave it None (= d/2)"
            )
        if self.heldout_split not in HELDOUT_SPLITS:
            raise ScoringError(f"RealConfig.heldout_split must be one of {HELDOUT_SPLITS}; found {self.heldout_split!r}")
        if not 0 < self.heldout_fraction < 1:
            raise ScoringError(f"RealConfig.heldout_fraction must be in (0, 1); found {self.heldout_fraction!r}")

    def module_chunk_for(self, device: torch.device) -> int:
        """How many modules train together on ``device`` (results do not depend on it)."""
        if self.module_chunk is not None:
            return self.module_chunk
        return 64 if device.type == "cpu" else 1024

    def code_dim_for(self, d: int) -> int:
        """``b`` for modules of width ``d``."""
        return self.code_dim if self.code_dim is not None else d // 2

    @property
    def method(self) -> str:
        """The scorer name of this variant: ``"real"`` or ``"real-release"``."""
        return METHOD_NAMES[self.variant]

    @property
    def min_per_class(self) -> int:
        """Examples (or groups) needed per class so both prior parts are non-empty."""
        return math.ceil(1 / self.heldout_fraction)
