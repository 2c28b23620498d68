"""REAL's configuration (:class:`RealConfig`) and what separates the described method from the release.

:data:`RELEASE_DIFFERENCES` lists every difference between ``variant="described"`` (METHOD.md §3)
and ``variant="release"`` (the authors' camera-ready entry point ``validation/OneForAll.py``,
§3a) with why it matters; summary.md prints it. :data:`RELEASE_UTILS_DIFFERENCES` does the same
for ``variant="release-utils"``, the release's older ``utils.py`` path (kept under its own name).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import ScoringError

VARIANTS = ("described", "release", "release-utils")
METHOD_NAMES = {"described": "real", "release": "real-release", "release-utils": "real-release-utils"}
HELDOUT_SPLITS = ("group", "answer")
# Which generator draws the held-out split (real_splits.heldout_rng); per variant, the one it must use, or
# (described) its default. "shared" = default_rng(seed), the generator ITI's validation split draws from.
HELDOUT_STREAMS = {"described": ("real", "shared"), "release": ("per-head",), "release-utils": ("shared",)}
# RealConfig fields added after scores were cached, with the value every earlier score of each variant had.
# At that value a field stays out of the cache keys (digest_fields), so adding it recomputed only what it changes.
LATER_FIELDS = {"heldout_stream": {"described": "shared", "release": "per-head", "release-utils": "shared"},
                "cross_fit": {"described": 1, "release": 1, "release-utils": 1}}
# Epochs when RealConfig leaves them unset: (VQ-AE, prior). OneForAll.py's CLI defaults are 30 and 6.
DEFAULT_EPOCHS = {"described": (20, 10), "release": (30, 6), "release-utils": (20, 10)}

# (difference, why it matters): the release variant (OneForAll.py) against the described one (METHOD.md §3a).
RELEASE_DIFFERENCES: tuple[tuple[str, str], ...] = (
    (
        "Prior input: the release's GRU priors read code t itself at step t and are scored on code t (no start "
        "token, no shift); the described priors predict code t from codes < t.",
        "A prior that sees the code it predicts learns to copy it, so each prior's likelihood says how often each "
        "code occurred in its class's training codes; how codes go together no longer counts.",
    ),
    (
        "EMA codebook: the release starts the running sums as a copy of the N(0, 1) codebook and the counts at 0, "
        "without bias correction; the described method (Sonnet 2) starts both at 0 and debiases.",
        "An entry the first minibatch does not choose is divided by ~eps, lands ~1e5 times its initial value and "
        "is not chosen again until decay^t shrinks it back (~1,146 updates at 0.99): until then a module has only "
        "the codes its first minibatches hit, often one, which scores every held-out example alike (AUC 0.5).",
    ),
    (
        "SupCon: the release's log-softmax denominator holds the anchor's own similarity (1/T) and its mean runs "
        "over every anchor, those without a positive counting 0; the described one leaves the anchor out of the "
        "denominator and averages over anchors that have a positive.",
        "The anchor's own term dominates the denominator (cosine 1), so the loss stays near log-batch and its "
        "gradient is weaker; at weight 1e-3 it moves the codes little.",
    ),
    (
        "Held-out set: the release holds out a random 20 % of each class's answers, drawn anew for every head "
        "(mix_seed(seed, layer, head)), and truncates the larger class to the smaller's size; the described method "
        "holds out 20 % of the questions, the same ones for every module.",
        "Answers of one question share its prompt, so a question ends up on both sides of the split; and each head "
        "is judged on its own held-out answers, so part of the difference between two heads' AUCs is the split.",
    ),
    (
        "Epochs: the release trains the VQ-AE for 30 epochs and each prior for 6 (OneForAll.py's defaults); the "
        "described method uses METHOD.md §3's 20 and 10.",
        "More VQ-AE updates give the release's EMA codebook time to recover from its first update (above).",
    ),
    (
        "Degenerate banks: the release scores every head 0.0 when a class has fewer than 2 answers (and 0.5 when "
        "the held-out set lacks a class); the described method refuses banks with fewer than 5 per class.",
        "Only matters for tiny banks; a 0.0 head is dropped at selection as the release drops it.",
    ),
)

# (difference, why it matters): the release's older utils.py path against the described method.
RELEASE_UTILS_DIFFERENCES: tuple[tuple[str, str], ...] = (
    (
        "Prior: utils.py trains ONE GRU prior, on 80 % of the aligned answers only; the described method "
        "trains one per class and scores their log-likelihood ratio.",
        "Without a violating prior the score says how typical a code sequence is of aligned answers, not what "
        "separates aligned from violating ones.",
    ),
    (
        "Prior input: utils.py's GRU reads code t itself at step t and is scored on code t (no start token, "
        "no shift); the described prior predicts code t from codes < t.",
        "A prior that sees the code it predicts learns to copy it, so the score reduces to whether each code "
        "occurred among the aligned training codes; how codes go together no longer counts.",
    ),
    (
        "Score: utils.py uses the float32 sequence probability exp(Σ_t log p(code_t)); the described method "
        "uses the mean-per-position log-likelihood ratio.",
        "The AUC only ranks, so this equals ranking by Σ log p, except that float32 underflows to 0 below "
        "Σ log p ≈ -104 and ties those examples (reproduced, and counted in diagnostic 'underflow').",
    ),
    (
        "Held-out set: utils.py holds out a random 20 % of the aligned answers and the FIRST as many violating "
        "answers in bank order, split per answer; the described method holds out 20 % of the questions.",
        "Answers of one question share its prompt, so a question ends up on both sides of the split, and the "
        "violating held-out answers all come from the first questions of the bank, not a random sample.",
    ),
    (
        "EMA codebook: utils.py starts the running sums as a copy of the N(0, 1) codebook and the counts at 0, "
        "without bias correction; the described method (Sonnet 2) starts both at 0 and debiases.",
        "An entry the first minibatch does not choose is divided by ~eps, lands ~1e5 times its initial value and "
        "is not chosen again until decay^t shrinks it back (~1,146 updates at 0.99): until then a module has only "
        "the codes its first minibatches hit, often one, which scores every held-out example alike (AUC 0.5).",
    ),
    (
        "SupCon: utils.py's positive set holds the anchor itself (its denominator leaves it out; every anchor "
        "counts; 1e-6 added to the log and to the positive count); the described one leaves the anchor out.",
        "The anchor's own term pushes every other example away from it, positives included, and lets the loss go "
        "negative; at weight 1e-3 it moves the codes little.",
    ),
    (
        "VQ-AE layers: utils.py's linear layers (its build_mlp) have no bias; the described VQ-AE has "
        "biases. (OneForAll.py has biases.)",
        "A bias-free encoder is positively homogeneous, E(c·x) = c·E(x), so codes are cut around the origin of "
        "the activation space instead of around the data, which for offset activations changes which codes exist.",
    ),
    (
        "Prior training: no gradient clipping in utils.py; the described prior clips each module's gradient "
        "norm at 1.0.",
        "Changes how the prior trains (large early steps), not what it models.",
    ),
)

# (release setting, why the release variant does not follow it).
RELEASE_SETTINGS_NOT_FOLLOWED: tuple[tuple[str, str], ...] = (
    (
        "Random-number order: OneForAll.py initialises each head's VQ-AE and GRU priors from the process-wide RNG "
        "seeded with mix_seed(seed, layer, head), in nn.Linear's [out, in] layout and module construction order.",
        "We draw the same distributions from a generator seeded by that head's mix_seed, in our batched [in, out] "
        "layout, so batched equals one head at a time. The VQ-AE minibatch order (mix_seed + 21), the per-answer "
        "split (+ 31 + 101) and the priors' minibatch orders (+ 31 + 202, aligned then violating each epoch) "
        "consume their generators exactly as the release's DataLoaders and randperm calls do (the same minibatches "
        "also need the bank in the release's example order: its train questions, then its val questions).",
    ),
    (
        "Collapse rule: perplexity averaged over minibatches, counted over all epochs (not consecutive ones), "
        "threshold --per_ratio 0.0 with patience 30 in OneForAll.py (0.2 / 25 in utils.py).",
        "Threshold 0 never fires under either rule, so every variant uses METHOD.md §3's threshold 0 (never).",
    ),
    (
        "Mixed precision: utils.py trains the prior under fp16 autocast with a GradScaler whenever CUDA is present "
        "(OneForAll.py's strict determinism turns it off).",
        "We train in float32 on every device so that CPU and GPU results agree and batched equals one module "
        "at a time.",
    ),
    (
        "Seeding in utils.py: splits, initialisations and minibatch orders come from the unseeded global RNG of "
        "each worker process.",
        "The release-utils variant seeds each module from (seed, module, stage) and holds out the same examples "
        "for every module; the release variant follows OneForAll.py's per-head seeds.",
    ),
    (
        "Models and data: rankings bundled for LLaMA-2 7B / 13B-chat and Qwen2.5-7B (32×32, 40×40, 28×28 heads, "
        "d_head 128), features read from features/{model}_tqa_mc2_head_wise.npy, K = 48 heads and α = 15 by "
        "default.",
        "We score SmolLM2-135M-Instruct (30×9 heads, d_head 64) from our own banks on the same seed-42 fold "
        "CSVs, and choose K and α on the validation split.",
    ),
)
Variant = Literal["described", "release", "release-utils"]


@dataclass(frozen=True)
class RealConfig:
    """REAL hyper-parameters; the defaults are the paper's described method (METHOD.md §3).

    ``variant="release"`` reproduces the authors' camera-ready code instead (OneForAll.py,
    METHOD.md §3a, :data:`RELEASE_DIFFERENCES`): it splits per answer and per head
    (``heldout_split`` resolves to ``"answer"``, ``heldout_stream`` to ``"per-head"``) and trains 30
    VQ-AE and 6 prior epochs unless told otherwise. ``variant="release-utils"`` is the release's older
    utils.py path (:data:`RELEASE_UTILS_DIFFERENCES`): per-answer split, no gradient clipping
    (``prior_grad_clip`` resolves to None), one prior (the violating prior's settings are unused).

    Held-out split of the described variant: ``heldout_stream="real"`` (default) draws it from REAL's own
    seed stream, independent of ITI's validation split; ``"shared"`` draws it from ``default_rng(seed)``,
    the generator ITI's split draws from, so that with the run's one seed REAL held out exactly ITI's
    validation questions (issue 20 §4). ``"shared"`` reproduces scores made before this option existed
    (and their cache keys). The release variants keep their own draws (``"per-head"``, ``"shared"``).

    ``cross_fit=n`` (described variant): the score is the mean held-out AUC over ``n`` disjoint held-out
    parts of ``heldout_fraction`` each (one permutation cut into consecutive parts, so split 0 is the single
    split and ``cross_fit=1`` is exactly it), each scored by two priors trained on the rest;
    ``diagnostics["auc_split{i}"]`` keep the parts' AUCs. Disjoint rather than independently drawn: no
    question counts twice in the mean, and the union of the parts is ``n`` times as many questions. The
    VQ-AE trains once, on every example, as METHOD.md §3 specifies: held-out labels reach it only
    through SupCon (weight λ), for every split alike and as in the single split, so cross-fitting
    averages out split noise of the specified score without changing what it measures (a VQ-AE per split
    without its held-out part would be another estimator, at ``n`` times the VQ-AE cost).
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
    vq_epochs: int | None = None  # None: 20 (described, release-utils) or 30 (release)
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
    prior_grad_clip: float | None = None  # per module; None: 1.0, or no clipping (release-utils)
    prior_epochs: int | None = None  # None: 10 (described, release-utils) or 6 (release)
    prior_batch_size: int = 32
    heldout_split: str | None = None  # "group" (by question) or "answer"; None: "group" (described), else "answer"
    heldout_fraction: float = 0.2
    heldout_stream: str | None = None  # "real" or "shared" (ITI's generator); None: "real" (described), else its own
    cross_fit: int = 1  # disjoint held-out parts the AUC is averaged over (described variant); 1 = one split
    # execution (does not change results)
    module_chunk: int | None = None  # modules trained together; None: 64 on CPU (cache-sized), 1024 elsewhere
    eval_batch: int = 256  # examples per slice when encoding / scoring without gradients

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ScoringError(f"RealConfig.variant must be one of {VARIANTS}; found {self.variant!r}")
        release = self.variant != "described"  # either release path
        utils = self.variant == "release-utils"
        # Resolve the variant-dependent defaults (a frozen dataclass sets fields this way).
        vq_epochs, prior_epochs = DEFAULT_EPOCHS[self.variant]
        if self.vq_epochs is None:
            object.__setattr__(self, "vq_epochs", vq_epochs)
        if self.prior_epochs is None:
            object.__setattr__(self, "prior_epochs", prior_epochs)
        if self.heldout_split is None:
            object.__setattr__(self, "heldout_split", "answer" if release else "group")
        if self.heldout_stream is None:
            object.__setattr__(self, "heldout_stream", HELDOUT_STREAMS[self.variant][0])
        if self.prior_grad_clip is None and not utils:
            object.__setattr__(self, "prior_grad_clip", 1.0)
        if release and self.heldout_split != "answer":
            raise ScoringError(
                f"RealConfig(variant={self.variant!r}) holds out per answer, as the release does; found "
                f"heldout_split={self.heldout_split!r}. Leave heldout_split unset, or use variant='described'"
            )
        if utils and self.prior_grad_clip is not None:
            raise ScoringError(
                f"RealConfig(variant='release-utils') does not clip the prior's gradient, as utils.py does not; found "
                f"prior_grad_clip={self.prior_grad_clip!r}. Leave prior_grad_clip unset, or use another variant"
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
        for name in ("temperature", "lr", "prior_lr", "ema_eps") + (() if utils else ("prior_grad_clip",)):
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
        streams = HELDOUT_STREAMS[self.variant]
        if self.heldout_stream not in streams:
            fix = ("Leave heldout_stream unset, or use variant='described'" if len(streams) == 1
                   else "Use 'real' (REAL's own stream) or 'shared' (ITI's generator, as scores before it existed)")
            raise ScoringError(f"RealConfig(variant={self.variant!r}) draws its held-out split from "
                               f"{' or '.join(map(repr, streams))}; found heldout_stream={self.heldout_stream!r}. {fix}")
        if not isinstance(self.cross_fit, int) or isinstance(self.cross_fit, bool) or self.cross_fit < 1:
            raise ScoringError(f"RealConfig.cross_fit must be a positive integer; found {self.cross_fit!r}. "
                               "Pass 1 (one held-out split) or more")
        if self.cross_fit > 1 and release:
            raise ScoringError(f"RealConfig(variant={self.variant!r}) holds out one split as the release does; found "
                               f"cross_fit={self.cross_fit}. Leave cross_fit at 1, or use variant='described'")
        if self.heldout_split not in HELDOUT_SPLITS:
            raise ScoringError(f"RealConfig.heldout_split must be one of {HELDOUT_SPLITS}; found {self.heldout_split!r}")
        if not 0 < self.heldout_fraction < 1:
            raise ScoringError(f"RealConfig.heldout_fraction must be in (0, 1); found {self.heldout_fraction!r}")
        if self.cross_fit * self.heldout_fraction > 1 + 1e-9:
            raise ScoringError(
                f"RealConfig(cross_fit={self.cross_fit}) holds out {self.cross_fit} disjoint parts of "
                f"heldout_fraction={self.heldout_fraction!r} each, more than the whole bank; found "
                f"{self.cross_fit * self.heldout_fraction:.3g}. Pass cross_fit <= {math.floor(1 / self.heldout_fraction + 1e-9)}"
            )

    def digest_fields(self) -> dict:
        """The fields that enter cache keys (``experiment.config.jsonable``): every field, less a
        :data:`LATER_FIELDS` field at the value scores had before it existed (so adding it kept those keys)."""
        fields = dataclasses.asdict(self)
        return {k: v for k, v in fields.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k][self.variant])}

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
        """The scorer name of this variant: ``"real"``, ``"real-release"`` or ``"real-release-utils"``."""
        return METHOD_NAMES[self.variant]

    @property
    def min_per_class(self) -> int:
        """Examples (or groups) needed per class so both prior parts are non-empty.

        The release variant needs one: like OneForAll.py it scores every module 0.0 when a class
        has fewer than 2 examples, and otherwise keeps at least one of each class on each side."""
        return 1 if self.variant == "release" else math.ceil(1 / self.heldout_fraction)
