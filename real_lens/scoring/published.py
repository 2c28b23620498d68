"""The REAL authors' published head rankings as a scorer source: ``real-published``.

The release (liam0949/REAL_ICLR, ``validation/results_dump/head_sorted/*.npy``) bundles one ranking
per model and fold: a numpy object array of ``((layer, head), relevance)`` rows, relevance being
REAL's held-out ROC-AUC. :func:`load_published_ranking` turns one into :class:`ModuleScores`
(method ``real-published``; steering strength score / max kept score, the release's
``normalize_by_max``), so it steers, exports, inspects and compares like any scorer.

Those files are pickles, and ``np.load(allow_pickle=True)`` would run whatever code a file names.
They are read here WITHOUT that: the ``.npy`` header is parsed with numpy's header readers, and the
payload goes through :class:`RankingUnpickler`, which admits only what such an array needs —
numpy's ndarray reconstruction, plain numeric dtypes, numeric numpy scalars (tuples, ints and
floats need no class) — and refuses every other class with one line.
"""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format

from ..errors import ScoringError
from .registry import register_scorer
from .scores import ModuleScores

try:  # numpy >= 2 names its core numpy._core; files written under numpy 1.x name numpy.core
    from numpy._core.multiarray import _reconstruct, scalar as _scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar as _scalar

METHOD = "real-published"
SCORE_UNIT = "the release's REAL relevance (held-out ROC-AUC), read from its ranking file"
MAX_FILE_BYTES = 64 * 2**20  # the bundled files are 14-30 KB; a ranking of every head of any model is far below this
# The dtypes such an array (and a numeric scalar in it) may carry: object rows, plain numbers.
_SAFE_DTYPES = frozenset({"O8", "O4", "b1", *(f"{k}{n}" for k in "iu" for n in (1, 2, 4, 8)), "f2", "f4", "f8"})


class RefusedPickle(pickle.UnpicklingError):
    """A ranking's pickle asked for something a ranking never needs (a class, function or dtype)."""


def _ndarray_reconstruct(cls, shape, typecode):
    if cls is not np.ndarray:
        raise RefusedPickle(f"array reconstruction of {cls!r}; only numpy.ndarray is allowed")
    return _reconstruct(cls, shape, typecode)


def _plain_dtype(spec, align=False, copy=True):
    if not isinstance(spec, str) or spec not in _SAFE_DTYPES:
        raise RefusedPickle(f"dtype {spec!r}; only object, integer and float dtypes are allowed")
    return np.dtype(spec, align, copy)


def _numeric_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise RefusedPickle(f"numpy scalar of dtype {dtype!r}; only integer and float scalars are allowed")
    return _scalar(dtype, data)


# (module, name) a ranking's pickle may name -> what it gets instead (each checks its arguments).
_ALLOWED = {
    **{(core, "_reconstruct"): _ndarray_reconstruct for core in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(core, "scalar"): _numeric_scalar for core in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
}


class RankingUnpickler(pickle.Unpickler):
    """A pickle reader that builds numpy arrays, numeric dtypes and scalars, tuples, ints and floats only.

    Any other class or function a pickle names (``os.system``, ``builtins.eval``, ...) is refused
    before it is looked up, so nothing in the file is ever called except numpy's own array
    reconstruction."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickle(f"it names {module}.{name}, which a head ranking never needs") from None

    def persistent_load(self, pid):
        raise RefusedPickle("it holds a persistent reference, which a head ranking never needs")


def read_ranking_file(path) -> list[tuple[tuple[int, int], float]]:
    """The ``((layer, head), relevance)`` rows of a release ranking file, in file order, read without executing it.

    ScoringError (one line) for anything that is not such a file: not ``.npy``, another array
    layout, a pickle naming anything beyond numpy arrays and numbers, malformed rows."""
    path = Path(path)
    fix = "pass one of the release's validation/results_dump/head_sorted/*.npy files"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ScoringError(f"published ranking {path} does not exist; {fix}") from None
    if not path.is_file():
        raise ScoringError(f"published ranking {path} is not a file; {fix}")
    if size > MAX_FILE_BYTES:
        raise ScoringError(f"published ranking {path} is {size:,} bytes, more than any head ranking "
                           f"({MAX_FILE_BYTES:,}); {fix}")
    with open(path, "rb") as fh:
        try:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as exc:
            raise ScoringError(f"published ranking {path} is not a readable .npy file ({exc}); {fix}") from None
        payload = fh.read()
    if dtype != np.dtype(object) or len(shape) != 2 or shape[1] != 2:
        raise ScoringError(f"published ranking {path} holds a {dtype} array of shape {shape}; expected an object "
                           f"array of shape (n_heads, 2) with ((layer, head), relevance) rows; {fix}")
    try:
        array = RankingUnpickler(io.BytesIO(payload)).load()
    except RefusedPickle as exc:
        raise ScoringError(f"refused to read published ranking {path}: {exc}; it was not written by np.save of a "
                           f"head ranking, so it is not loaded (nothing in it was run); {fix}") from None
    except Exception as exc:  # truncated or corrupt payload
        raise ScoringError(f"published ranking {path} is corrupt ({type(exc).__name__}: {exc}); {fix}") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.dtype(object) or array.shape != tuple(shape):
        raise ScoringError(f"published ranking {path}: its payload is not the object array of shape {shape} its "
                           f"header declares; {fix}")
    return [_row(path, i, key, value) for i, (key, value) in enumerate(array)]


def _row(path, i: int, key, value) -> tuple[tuple[int, int], float]:
    def is_int(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) and x >= 0

    if not (isinstance(key, tuple) and len(key) == 2 and all(map(is_int, key))):
        raise ScoringError(f"published ranking {path}: row {i} names module {key!r}; expected a (layer, head) pair "
                           "of non-negative integers")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)):
        raise ScoringError(f"published ranking {path}: row {i} ({key}) has relevance {value!r}; expected a finite number")
    return (int(key[0]), int(key[1])), float(value)


def load_published_ranking(path, *, model=None, bank=None) -> ModuleScores:
    """A release ranking file as :class:`ModuleScores` ``[n_layers, n_heads]`` (method ``real-published``).

    Every head of the model must appear exactly once (the release ranks all of them). ``model``
    (a loaded model, or a model name whose config is read without its weights) or ``bank`` (an
    :class:`~real_lens.bank.ActivationBank` of head activations): refuse, with one line, a ranking
    made for a model of another shape (n_layers × n_heads). Strengths follow the release:
    score / max kept score (``select(k)``); heads at relevance exactly 0 (the release's
    "collapsed") rank last, as they are dropped there.
    """
    rows = read_ranking_file(path)
    if not rows:
        raise ScoringError(f"published ranking {path} holds no rows; pass a ranking of every head of a model")
    n_layers = 1 + max(layer for (layer, _), _ in rows)
    n_heads = 1 + max(head for (_, head), _ in rows)
    scores = torch.full((n_layers, n_heads), math.nan, dtype=torch.float64)
    for (layer, head), value in rows:
        if not math.isnan(scores[layer, head]):
            raise ScoringError(f"published ranking {path} lists head L{layer}H{head} twice; a ranking lists each "
                               "head once")
        scores[layer, head] = value
    missing = int(torch.isnan(scores).sum())
    if missing:
        raise ScoringError(f"published ranking {path} covers {len(rows)} of the {n_layers} x {n_heads} heads its "
                           f"indices span ({missing} missing); a ranking lists every head of its model")
    expected = _expected_shape(model, bank)
    if expected is not None and expected[1] != (n_layers, n_heads):
        what, (m_layers, m_heads) = expected
        raise ScoringError(f"published ranking {Path(path).name} is for a model with {n_layers} layers x {n_heads} "
                           f"heads ({n_layers * n_heads}), but {what} has {m_layers} x {m_heads} "
                           f"({m_layers * m_heads}); use the ranking file made for this model")
    values = scores.flatten()
    meta = {"source": "published ranking", "file": str(Path(path).resolve()), "file_name": Path(path).name,
            "score_unit": SCORE_UNIT, "n_heads_zero": int((values == 0).sum()), "site": "head_z"}
    return ModuleScores(scores.float(), METHOD, {"path": str(path)}, {}, meta)


def _expected_shape(model, bank) -> tuple[str, tuple[int, int]] | None:
    """(what, (n_layers, n_heads)) the ranking must match, from a bank, a model, or a model name."""
    if bank is not None:
        if not bank.is_head_site:
            raise ScoringError(f"a published ranking scores attention heads, but the bank is at site {bank.site!r}; "
                               "collect a head_z bank")
        return "the bank", tuple(bank.module_shape)
    if model is None:
        return None
    if isinstance(model, (str, Path)):
        from ..models import estimate_memory  # reads the config only, no weights

        config = estimate_memory(str(model))
        return f"model {model}", (config.n_layers, config.n_heads)
    return f"model {getattr(model.cfg, 'model_name', '')}".rstrip(), (model.cfg.n_layers, model.cfg.n_heads)


@dataclass(frozen=True)
class PublishedConfig:
    """Where ``real-published`` reads its scores: one release ranking file (``.npy``)."""

    path: str

    def __post_init__(self):
        if not isinstance(self.path, (str, Path)) or not str(self.path):
            raise ScoringError(f"PublishedConfig.path must be a ranking file path; got {self.path!r}")


def _experiment_options(experiment, fold: int) -> dict:
    """The main job's file for ``fold``: ``published_ranking[fold]``, or its only file for every fold."""
    files = experiment.published_ranking or ()
    if len(files) == 1:
        return {"cfg": PublishedConfig(files[0])}
    if fold >= len(files):
        raise ScoringError(f"--published-ranking names {len(files)} file(s) but the run reaches fold {fold}; give one "
                           "ranking per fold, in fold order (or one for every fold)")
    return {"cfg": PublishedConfig(files[fold])}


@register_scorer(METHOD, config=PublishedConfig, strength="score", from_file=True, every_rank=True,
                 experiment_settings=("published_ranking",), experiment_options=_experiment_options)
def published_scorer(bank, *, model=None, seed: int = 0, device=None, cfg: PublishedConfig | None = None) -> ModuleScores:
    """Registry entry: reads ``cfg.path`` (nothing is fitted on ``bank``; it supplies the shape check)."""
    if cfg is None:
        raise ScoringError(f"{METHOD} reads its scores from a published ranking file; give path=FILE "
                           "(score_modules(bank, 'real-published', path=FILE), or `real-lens score --from-published FILE`)")
    return load_published_ranking(cfg.path, bank=bank)
