"""The main job's configuration: :class:`ExperimentConfig`, its presets, and what it implies.

A dose is either a target KL(unsteered ‖ steered) per token (``kl_grid``, the default: α is
calibrated per method, fold and K on held-apart WikiText-2 paragraphs, so every method is
compared at the same side effect) or a fixed α (``kl_grid=None``: the paper's α grid, chosen on
val). :func:`dose_groups`, :func:`val_selects` and :func:`fit_parts` say what a configuration
reports, whether val chooses anything, and which fold parts fit scores and directions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..configs import build_config
from .. import hooks
from ..errors import RealLensError, unknown_name_error
from ..names import DEFAULT_MODEL, DTYPE_NAMES, READOUTS
from ..tasks.truthfulqa import DEFAULT_MC_PROMPT, MC_PROMPT_STYLES

logger = logging.getLogger(__name__)

# The methods a run compares by default: every built-in scorer (scoring.registry), `random` being the null.
METHODS = ("real", "real-release", "iti", "patching", "attribution", "random")
SIGMA_BANKS = ("scoring", "tuning")  # ExperimentConfig.sigma_bank
# Fields added after cells were cached: at these values they stay out of a cell's digest (store.cached_cell),
# so adding them did not recompute anything.


@dataclass(frozen=True)
class ExperimentConfig:
    model: str = DEFAULT_MODEL
    task: str = "truthfulqa"
    methods: tuple[str, ...] = METHODS
    folds: tuple[int, ...] | None = None  # None = every fold of the task (2 for TruthfulQA, 1 for CAA)
    k_grid: tuple[int, ...] = (16,)  # top-K heads; more than one = K chosen on val (fitting then uses train only)
    # Doses: KL(unsteered||steered) targets in nats per token, every method at the same side effect
    # (README: why 0.1 and 0.3); none = the alpha grid instead (the paper's protocol).
    kl_grid: tuple[float, ...] | None = (0.1, 0.3)  # KL targets, nats per token; none = use the alpha grid
    alpha_grid: tuple[float, ...] = (5.0, 15.0)  # fixed alphas chosen on val; only when kl_grid is none
    null_draws: int = 3  # random head sets per fold (the random null), each at the K and dose a method chose
    calibration_texts: int = 8  # WikiText-2 paragraphs that calibrate alpha (disjoint from the CE/KL ones)
    select_metric: str | None = None  # None = the task's own (MC2 for TruthfulQA); see evaluation.suite
    mc_prompt: str = DEFAULT_MC_PROMPT  # TruthfulQA MC scoring prompt (METHOD.md §6a); banks stay "Q: {q} A: {a}"
    site: str = "head_z"
    readout: str = "last"
    # Defaults sized for the 2-core CPU (≤45 min; README: where the time goes): "larger" and "full" are bigger.
    questions_per_part: int | None = 80  # at most N questions per fold part (train/val/test); None = all
    n_val_questions: int | None = 25  # per fold; None = all val questions (a seeded sample otherwise)
    n_test_questions: int | None = 40  # per fold; None = all test questions (a seeded sample otherwise)
    patching_pairs: int = 8  # contrast pairs per fold for activation patching (one forward per pair and head chunk)
    attribution_pairs: int = 64  # contrast pairs per fold for attribution patching (2 forwards + 1 backward per batch)
    # Its memory: the backward keeps every layer's activations of these tokens (~5 MB per token on a 1.5B model in
    # float32, ~0.4 MB on SmolLM2-135M), so a large model needs fewer; the scores do not depend on it.
    attribution_batch_tokens: int = 2048  # tokens per forward+backward of attribution patching (lower it for large models)
    pair_demos: int = 3  # demonstrations per contrast pair (scoring.pairs)
    pair_min_gap: float = 0.5  # nats: pairs whose clean-corrupted gap is smaller are dropped (and counted)
    # real-published's files: the REAL release's rankings (validation/results_dump/head_sorted/*.npy) of this
    # model, one per fold in fold order (fold 0's first), or one for every fold; read without executing pickle.
    published_ranking: tuple[str, ...] | None = None  # real-published's ranking files, one per fold (or one for all)
    real_epochs: int = 20
    real_prior_epochs: int = 10
    real_cross_fit: int = 1  # REAL's score = mean held-out AUC over this many disjoint held-out splits (1 = one split)
    real_release_epochs: int = 30  # real-release's VQ-AE epochs (OneForAll.py's default)
    real_release_prior_epochs: int = 6  # real-release's GRU prior epochs (OneForAll.py's default)
    # Which bank σ (the std of projections onto each direction) comes from: "scoring" = the fold's fit examples
    # (METHOD.md §4); "tuning" = the release's unlabelled `Q: {q} A: {a} Q: {other q}` bank of the same questions.
    sigma_bank: str = "scoring"
    side_effect_texts: int = 20  # 0 = no CE/KL
    side_effect_tokens: int = 128
    n_boot: int = 1000
    batch_size: int = 16
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"  # the model's weights (float32, bfloat16, float16); not float32 = other cells
    device_map: str | None = None  # spread the model over devices (auto, balanced, ... or a JSON map); exclusive with device
    data_dir: str | None = None

    def __post_init__(self):
        from ..models import parse_device_map
        from ..scoring.registry import method_names, scorer_spec  # imports the scorers (and torch): not at --help time

        known = method_names()
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise RealLensError(f"unknown method(s) {unknown}; expected some of {list(known)}")
        from_file = [m for m in self.methods if scorer_spec(m).from_file]
        if from_file and not self.published_ranking:
            raise RealLensError(f"{from_file[0]} reads its scores from the REAL release's ranking files; give "
                                "--published-ranking FOLD0.npy,FOLD1.npy (one per fold, or one for every fold)")
        if self.published_ranking and not from_file:
            raise RealLensError("--published-ranking is read by the real-published method only; add real-published "
                                "to --methods or drop --published-ranking")
        if not self.k_grid or min(self.k_grid) < 1:
            raise RealLensError(f"k_grid must hold positive integers; got {self.k_grid}")
        if not self.alpha_grid:
            raise RealLensError("alpha_grid must not be empty")
        if not all(math.isfinite(a) for a in self.alpha_grid):
            raise RealLensError(f"alpha_grid must hold finite numbers; got {self.alpha_grid}")
        if self.kl_grid is not None and (not self.kl_grid or not all(0 < t < math.inf for t in self.kl_grid)):
            raise RealLensError(f"kl_grid must hold KL targets > 0 in nats per token (e.g. 0.1,0.3) or be none; "
                                f"got {self.kl_grid}")
        if not 0 <= self.seed < 2**32:
            raise RealLensError(f"expected an integer seed from 0 to {2**32 - 1}; got {self.seed!r}")
        if self.folds is not None and (not self.folds or min(self.folds) < 0):
            raise RealLensError(f"folds must be fold indices (0, 1, ...); got {self.folds}")
        if self.sigma_bank not in SIGMA_BANKS:
            raise RealLensError(f"unknown sigma bank {self.sigma_bank!r}; expected one of {list(SIGMA_BANKS)}")
        if self.sigma_bank == "tuning" and self.task != "truthfulqa":
            raise RealLensError(f"sigma_bank 'tuning' is the REAL release's TruthfulQA tuning bank; found task "
                                f"{self.task!r}. Use --sigma-bank scoring for other tasks")
        if self.site not in hooks.SITES:
            raise unknown_name_error("site", self.site, hooks.SITES)
        if self.readout not in READOUTS:
            raise unknown_name_error("readout", self.readout, READOUTS)
        if isinstance(self.pair_min_gap, bool) or not isinstance(self.pair_min_gap, (int, float)) \
                or not 0 <= self.pair_min_gap < math.inf:
            raise RealLensError(f"pair_min_gap must be a finite number of nats >= 0 (e.g. 0.5); got {self.pair_min_gap!r}")
        if self.dtype not in DTYPE_NAMES:
            raise RealLensError(f"unknown dtype {self.dtype!r}; expected one of {list(DTYPE_NAMES)}")
        if self.device_map is not None:
            parse_device_map(self.device_map)  # a strategy or a JSON map, said in one line otherwise
            if self.device is not None:
                raise RealLensError(f"device {self.device!r} and device_map {self.device_map!r} both place the model; "
                                    "give one (--device for one device, --device-map to spread it)")
        if self.mc_prompt not in MC_PROMPT_STYLES:
            raise RealLensError(f"unknown MC prompt {self.mc_prompt!r}; expected one of {list(MC_PROMPT_STYLES)}")
        # Counts the command line passes straight through (real_lens.configs derives one option per field).
        for name in ("questions_per_part", "n_val_questions", "n_test_questions", "patching_pairs", "attribution_pairs",
                     "attribution_batch_tokens", "pair_demos", "real_epochs",
                     "real_prior_epochs", "real_cross_fit", "real_release_epochs", "real_release_prior_epochs", "side_effect_tokens", "n_boot", "batch_size", "side_effect_texts",
                     "null_draws", "calibration_texts"):
            value, least = getattr(self, name), 0 if name == "side_effect_texts" else 1
            optional = name in ("questions_per_part", "n_val_questions", "n_test_questions")
            if not (value is None and optional) and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise RealLensError(f"{name} must be an integer >= {least}{' or None (all)' if optional else ''}; "
                                    f"got {value!r}")
        if self.real_cross_fit > 1:  # its bound (disjoint held-out parts of 20 % each), before anything is computed
            from ..scoring.real_config import RealConfig

            most = math.floor(1 / RealConfig().heldout_fraction + 1e-9)
            if self.real_cross_fit > most:
                raise RealLensError(f"real_cross_fit (--real-cross-fit) must be at most {most}: REAL holds out disjoint "
                                    f"parts of {RealConfig().heldout_fraction:.0%} of the questions; got {self.real_cross_fit}")


PRESETS: dict[str, dict[str, Any]] = {
    # CI / tests / a smoke run (≤ 3 min per task on the embedded model): a handful of questions (2 test
    # questions per fold: NQ-Swap's long prompts make every generated cell cost ~0.5 s per item on 2 cores),
    # one K and one KL target, two null draws, short training, one pair and one demonstration per pair scorer.
    "quick": dict(questions_per_part=5, n_val_questions=None, n_test_questions=2, k_grid=(2,),
                  kl_grid=(0.3,), alpha_grid=(5.0,), null_draws=2, calibration_texts=4, patching_pairs=1,
                  attribution_pairs=1, pair_demos=1, real_epochs=2, real_prior_epochs=2,
                  real_release_epochs=2, real_release_prior_epochs=2,
                  pair_min_gap=0.0,  # keeps every pair: the tiny random model's gaps are ~0.05 nats
                  side_effect_texts=4, side_effect_tokens=32, n_boot=100, methods=METHODS),
    # The paper's protocol at full size (for a GPU): K 48 among the grid, α 15, every test question.
    # The default fitting and scoring (its scores are reused when copied into the run), every test question
    # of the default sample (160 per fold) and a 5-draw null: ~100 min on the 2-core CPU.
    "larger": dict(n_test_questions=None, null_draws=5),
    "full": dict(k_grid=(16, 32, 48, 64), kl_grid=(0.03, 0.1, 0.3), alpha_grid=(5.0, 10.0, 15.0, 20.0),
                 null_draws=20, patching_pairs=128, attribution_pairs=256, calibration_texts=32,
                 questions_per_part=None, n_val_questions=None, n_test_questions=None, side_effect_texts=100),
}


def config_for(preset: str | None = None, **overrides) -> ExperimentConfig:
    """A preset's configuration with ``overrides`` (an explicit None sets an optional field to None)."""
    if preset is not None and preset not in PRESETS:
        raise RealLensError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    values = {**(PRESETS[preset] if preset else {}), **overrides}
    return ExperimentConfig(**values)


@dataclass(frozen=True)
class Dose:
    """How hard a selection is steered: a fixed ``alpha``, or the α at which the held-apart calibration
    paragraphs reach a target ``kl`` (nats per token; :func:`~real_lens.evaluation.dose.calibrate_alpha`)."""

    kind: str  # "alpha" or "kl"
    value: float

    @property
    def label(self) -> str:  # in file names and tables
        return f"{'a' if self.kind == 'alpha' else 'kl'}{self.value:g}"





def dose_groups(cfg: ExperimentConfig) -> list[tuple[str, tuple[Dose, ...]]]:
    """``(report label, doses val chooses among)``: one group per KL target (each reported; val chooses K),
    or, with ``kl_grid=None``, one group of every α (val chooses K and α, the paper's protocol)."""
    if cfg.kl_grid:
        return [(f"KL {t:g}", (Dose("kl", t),)) for t in cfg.kl_grid]
    return [("", tuple(Dose("alpha", a) for a in cfg.alpha_grid))]


def val_selects(cfg: ExperimentConfig) -> bool:
    """Whether val has anything to choose (more than one K, or more than one α in a group)."""
    return any(len(cfg.k_grid) * len(doses) > 1 for _, doses in dose_groups(cfg))


def fit_parts(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The fold parts that fit scores, directions and σ: train only when val chooses anything, so val
    never enters fitting; train+val when it chooses nothing (the paper's fixed-K/α protocol)."""
    return ("train",) if val_selects(cfg) else ("train", "val")


def fit_groups(cfg: ExperimentConfig, fold) -> set[str]:
    """The questions of ``fold`` (a task's fold) that fit scores, directions and σ: its :func:`fit_parts`."""
    return set().union(*(getattr(fold, part) for part in fit_parts(cfg)))


def arm_name(method: str, group: str) -> str:
    return f"{method} @ {group}" if group else method


def task_slug(task: str) -> str:
    """A task name as a folder name (``caa:refusal`` -> ``caa-refusal``)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in task)


# Fields added after runs were made, with the default those runs had: left at it, a field is not in the
# cells' digests (store.cached_cell) and an older config.json without it is the same configuration.
LATER_FIELDS = {"sigma_bank": "scoring", "dtype": "float32", "device_map": None}


def jsonable(obj):
    """``obj`` as JSON values, as cache keys and config.json hold it: a dataclass as its fields, or as its
    ``digest_fields()`` where it has one (a scorer config that keeps later fields at their old values out)."""
    if dataclasses.is_dataclass(obj):
        digest_fields = getattr(obj, "digest_fields", None)
        return jsonable(digest_fields() if digest_fields else dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def load_config(path):
    """The :class:`ExperimentConfig` saved in a run's ``config.json``.

    ``path``: the file or the run directory holding it. The file is ``{"config": {...},
    "real_lens_version": ...}`` as ``real-lens run`` writes it (a bare ``{...}`` of settings is
    read too).
    """
    from ..io import read_json

    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise RealLensError(f"no configuration at {path}; pass a run's config.json or its directory (e.g. runs/truthfulqa)")
    try:
        stored = read_json(path)
    except ValueError as exc:
        raise RealLensError(f"{path} is not valid JSON ({exc}); pass a config.json written by `real-lens run`") from None
    version = stored.get("real_lens_version") if isinstance(stored, dict) else None
    if version is not None and version != __version__:
        logger.warning("%s was written by real-lens %s; this is %s", path, version, __version__)
    values = stored["config"] if isinstance(stored, dict) and "config" in stored else stored
    return build_config(ExperimentConfig, values, source=str(path))
