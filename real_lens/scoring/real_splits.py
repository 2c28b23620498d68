"""REAL's seeding and splitting: per-module random streams, the held-out split of each variant, and the
release's per-head seeds (METHOD.md §3a: ``mix_seed``, the loaders' permutations, the per-answer split).

Module ``m``'s streams come from ``(seed, m, stage)`` (or, in the release variant, from its head's
release seed), never from a shared generator, so a module's score does not depend on which chunk it
trains in: batched equals one module at a time. The described variant's held-out split comes from
REAL's own stream of the seed (:func:`heldout_rng`), not from the generator ITI's validation split
draws from, so the two scorers of one run do not judge modules on the same questions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from ..errors import ScoringError

_STAGES = {"vqae": 0, "prior_aligned": 1, "prior_violating": 2}
# The entropy word of REAL's own held-out stream (heldout_rng): ASCII "REAL". Its seed sequence [seed, key] is
# of another length than the modules' [seed, module, stage], so the streams are distinct.
HELDOUT_STREAM_KEY = 0x5245414C


# --- seeding and splitting -------------------------------------------------------------
def module_generators(seed: int, modules: Sequence[int], stage: str, *, split: int = 0) -> list[torch.Generator]:
    """One CPU generator per module, seeded from ``(seed, module, stage)`` only; cross-fitting's split
    ``i > 0`` (``RealConfig.cross_fit``) from ``(seed, module, stage, i)``, so split 0 is the single split's."""
    generators = []
    for m in modules:
        entropy = [seed, m, _STAGES[stage]] + ([split] if split else [])
        high, low = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
        generators.append(torch.Generator().manual_seed(int(high) << 32 | int(low)))
    return generators


def heldout_rng(seed: int, stream: str) -> np.random.Generator:
    """The generator REAL's held-out split draws from (``RealConfig.heldout_stream``).

    ``"real"``: REAL's own stream, ``SeedSequence([seed, HELDOUT_STREAM_KEY])``. ``"shared"``:
    ``default_rng(seed)`` itself, which is also what ITI's :func:`~real_lens.scoring.iti.split_groups`
    draws its validation groups from: with the run's one seed, a by-group split then holds out exactly
    ITI's validation questions (every score before ``heldout_stream`` existed; issue 20 §4).
    """
    if stream == "real":
        return np.random.default_rng(np.random.SeedSequence([seed, HELDOUT_STREAM_KEY]))
    if stream == "shared":
        return np.random.default_rng(seed)
    raise ScoringError(f"a held-out split draws from the stream 'real' or 'shared'; found {stream!r}")


def split_heldout(
    labels: Int[Tensor, "example"], groups: Sequence[str], *, how: str, fraction: float, seed: int,
    stream: str = "real",
) -> tuple[Int[Tensor, "train"], Int[Tensor, "heldout"]]:
    """Example indices for training the priors and for scoring them (the same for all modules).

    ``how="group"``: a random ``fraction`` of the groups (questions) is held out, so no question
    is on both sides. ``how="answer"``: ``fraction`` of each class's examples is held out.
    ``stream``: which generator draws it (:func:`heldout_rng`). The first of :func:`split_heldout_folds`.
    """
    return split_heldout_folds(labels, groups, how=how, fraction=fraction, seed=seed, stream=stream, n_splits=1)[0]


def split_heldout_folds(
    labels: Int[Tensor, "example"], groups: Sequence[str], *, how: str, fraction: float, seed: int,
    stream: str = "real", n_splits: int,
) -> list[tuple[Int[Tensor, "train"], Int[Tensor, "heldout"]]]:
    """``n_splits`` disjoint held-out parts, each with the rest as its prior-training part (cross-fitting).

    One permutation of the groups (``how="answer"``: of each class's examples) is cut into consecutive
    parts of ``round(fraction · n)``; part ``i`` is held out in split ``i``. So split 0 is the single
    split, every held-out part is as large as it, and no example is held out twice.
    """
    rng = heldout_rng(seed, stream)
    y = labels.cpu().numpy()
    if how == "group":
        names = list(dict.fromkeys(groups))
        size = max(1, round(fraction * len(names)))
        _check_parts(n_splits, size, len(names), "groups (questions)")
        place = {names[i]: position for position, i in enumerate(rng.permutation(len(names)))}
        part = np.array([place[g] // size for g in groups])
    else:
        part = np.empty(len(y), dtype=np.int64)
        for c in (0, 1):
            idx = np.flatnonzero(y == c)
            size = max(1, round(fraction * len(idx)))
            _check_parts(n_splits, size, len(idx), f"examples of label {c}")
            part[rng.permutation(idx)] = np.arange(len(idx)) // size
    splits = []
    for i in range(n_splits):
        held = part == i
        for side, mask in (("prior-training", ~held), ("held-out", held)):
            missing = [c for c in (0, 1) if not (y[mask] == c).any()]
            if missing:
                which = "" if n_splits == 1 else f" of split {i}"
                raise ScoringError(
                    f"the {how} split left no examples of label {missing[0]} in the {side} part{which}; "
                    "every group should have both labels — add groups or use heldout_split='answer'"
                )
        splits.append((torch.from_numpy(np.flatnonzero(~held)), torch.from_numpy(np.flatnonzero(held))))
    return splits


def _check_parts(n_splits: int, size: int, n: int, what: str) -> None:
    if n_splits * size > n:
        raise ScoringError(
            f"cross_fit={n_splits} needs {n_splits} disjoint held-out parts of {size} {what}; found only {n}. "
            "Lower RealConfig.cross_fit (or heldout_fraction), or score a bank with more questions"
        )


def split_release_heldout(
    labels: Int[Tensor, "example"], *, fraction: float, seed: int
) -> tuple[Int[Tensor, "train"], Int[Tensor, "heldout"]]:
    """The release's split: ``(aligned examples the prior trains on, held-out examples)``.

    A random ``int((1 - fraction)·P)`` of the ``P`` aligned examples train the prior (the
    release's ``int(0.8 · len)``); the rest are held out together with the FIRST as many
    violating examples in bank order (all of them if there are fewer). Per answer: groups
    play no part. The same split serves every module.
    """
    y = labels.cpu().numpy()
    aligned = np.random.default_rng(seed).permutation(np.flatnonzero(y == 1))
    n_train = min(max(int((1 - fraction) * len(aligned)), 1), len(aligned) - 1)
    n_heldout = len(aligned) - n_train
    violating = np.flatnonzero(y == 0)[:n_heldout]
    heldout = np.sort(np.concatenate([aligned[n_train:], violating]))
    return torch.from_numpy(np.sort(aligned[:n_train])), torch.from_numpy(heldout)


# --- the release's seeds, split and minibatch orders (OneForAll.py) ----------------------------
_MODULUS = 2**31 - 1


def mix_seed(base: int, a: int, b: int) -> int:
    """The release's per-head seed: ``base`` mixed with ``a`` (layer) and ``b`` (head) in 64-bit arithmetic.

    ``x = base XOR (a·0x9E3779B97F4A7C15)``, then ``x XOR (b·0xC2B2AE3D27D4EB4F)``, both modulo
    2^64; the seed is ``x mod (2^31 - 1)``.
    """
    mask = (1 << 64) - 1
    x = (int(base) ^ (int(a) * 0x9E3779B97F4A7C15)) & mask
    x = (x ^ (int(b) * 0xC2B2AE3D27D4EB4F)) & mask
    return x % _MODULUS


def release_seeds(seed: int, layer: int, head: int) -> dict[str, int]:
    """A head's seeds in the release: ``job = mix_seed(seed, layer, head)``; the VQ-AE's minibatch
    order ``job + 21``; the prior split ``(job + 31 + 101) mod (2^31 - 1)``; the priors' minibatch
    orders ``(job + 31 + 202) mod (2^31 - 1)``. ``init`` (= job) seeds our own initialisation streams."""
    job = mix_seed(seed, layer, head)
    return {"init": job, "vqae_order": job + 21, "split": (job + 31 + 101) % _MODULUS,
            "prior_order": (job + 31 + 202) % _MODULUS}


def loader_permutation(generator: torch.Generator, n: int) -> Int[Tensor, "n"]:
    """One epoch's order of ``DataLoader(range(n), shuffle=True, generator=generator)``, drawn as it draws.

    Its iterator first draws a base seed (one int64); its ``RandomSampler`` then draws
    ``randperm(n)`` and, when the epoch ends, a second ``randperm(n)`` for the (empty) remainder.
    A test compares this with torch's DataLoader over several epochs.
    """
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    order = torch.randperm(n, generator=generator)
    torch.randperm(n, generator=generator)
    return order


def split_release_per_answer(
    labels: Int[Tensor, "example"], generator: torch.Generator, *, fraction: float
) -> tuple[Int[Tensor, "train_aligned"], Int[Tensor, "train_violating"], Int[Tensor, "heldout"]]:
    """One head's prior split in the release: ``(aligned train, violating train, held out)`` example indices.

    ``randperm`` of the aligned examples, then of the violating ones (bank order, one generator);
    ``max(1, min(int((1 - fraction)·n), n - 1))`` of each class train its prior; the rest of each
    class is held out, both cut to the smaller class's count (after the permutation). The held-out
    indices are the aligned ones, then the violating ones.
    """
    y = labels.cpu()
    aligned, violating = torch.nonzero(y == 1).flatten(), torch.nonzero(y == 0).flatten()
    parts = []
    for idx in (aligned, violating):
        perm = torch.randperm(len(idx), generator=generator)
        n_train = max(1, min(int((1 - fraction) * len(idx)), len(idx) - 1))
        parts.append((idx[perm[:n_train]], idx[perm[n_train:]]))
    (train_aligned, held_aligned), (train_violating, held_violating) = parts
    n_eval = min(len(held_aligned), len(held_violating))
    return train_aligned, train_violating, torch.cat([held_aligned[:n_eval], held_violating[:n_eval]])


def init_generators(jobs: Sequence[int], stage: str) -> list[torch.Generator]:
    """Our own initialisation stream per head, from its release seed and the stage."""
    generators = []
    for job in jobs:
        high, low = np.random.SeedSequence([job, _STAGES[stage]]).generate_state(2, dtype=np.uint32)
        generators.append(torch.Generator().manual_seed(int(high) << 32 | int(low)))
    return generators


def seeded_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed."""
    return [torch.Generator().manual_seed(s) for s in seeds]


def module_position(m: int, module_shape: Sequence[int]) -> tuple[int, int]:
    """``(layer, head)`` of flat module ``m`` (layer-major); ``(layer, 0)`` for a layer site."""
    n_heads = module_shape[1] if len(module_shape) == 2 else 1
    return divmod(m, n_heads)
