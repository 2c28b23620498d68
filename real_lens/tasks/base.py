"""Labelled, grouped contrastive examples: the unit every task produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError

ALIGNED, VIOLATING = 1, 0


@dataclass(frozen=True)
class Example:
    """One prompt + one answer. ``label`` 1 = behaviour-aligned, 0 = behaviour-violating.

    ``group`` is the question the example answers: every split is made by group.
    The model reads ``prompt + answer``; the answer starts with its own separator
    (e.g. ``" Paris."``) so that ``prompt`` tokenises to a prefix of the full text.
    """

    prompt: str
    answer: str
    label: int
    group: str

    @property
    def text(self) -> str:
        return self.prompt + self.answer


@dataclass(frozen=True)
class Fold:
    """Groups (questions) of one cross-validation fold; disjoint by construction."""

    train: frozenset[str]
    val: frozenset[str]
    test: frozenset[str]

    def __post_init__(self):
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = getattr(self, a) & getattr(self, b)
            if shared:
                raise DataError(
                    f"fold is not split by group: {len(shared)} question(s) are in both "
                    f"{a} and {b}, e.g. {sorted(shared)[0]!r}; make the splits disjoint"
                )


@dataclass(frozen=True)
class Task:
    """A behaviour: examples, folds, and whatever its evaluation needs (``eval_data``)."""

    name: str
    examples: tuple[Example, ...]
    folds: tuple[Fold, ...]
    prompt_format: str
    source: str
    eval_data: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        check_examples(self.examples, source=self.source)

    @property
    def groups(self) -> list[str]:
        """Distinct groups in first-appearance order."""
        return list(dict.fromkeys(e.group for e in self.examples))

    def select(self, groups) -> tuple[Example, ...]:
        keep = frozenset(groups)
        return tuple(e for e in self.examples if e.group in keep)

    def restrict(self, groups) -> "Task":
        """The same task on a subset of its groups; folds are intersected with it."""
        keep = frozenset(groups)
        folds = tuple(Fold(f.train & keep, f.val & keep, f.test & keep) for f in self.folds)
        return Task(self.name, self.select(keep), folds, self.prompt_format, self.source, dict(self.eval_data))

    def limit(self, n: int) -> "Task":
        """At most ``n`` examples, whole groups only (so splits stay valid), in task order."""
        if n < 1:
            raise DataError(f"--limit must be at least 1, got {n}")
        kept, count = [], 0
        for group in self.groups:
            size = sum(e.group == group for e in self.examples)
            if count + size > n and kept:
                break
            kept.append(group)
            count += size
        return self.restrict(kept)

    def sample_per_part(self, n: int) -> "Task":
        """At most ``n`` groups from each fold's train, val and test parts (task order), so every
        part of every fold stays non-empty in a small run."""
        if n < 1:
            raise DataError(f"questions per fold part must be at least 1, got {n}")
        order = {g: i for i, g in enumerate(self.groups)}
        kept = set()
        for fold in self.folds:
            for part in (fold.train, fold.val, fold.test):
                kept.update(sorted(part, key=order.__getitem__)[:n])
        return self.restrict(kept)


def check_examples(examples, *, source: str) -> None:
    """Every group needs both labels; labels are 0/1; there is something at all."""
    if not examples:
        raise DataError(f"{source}: no examples found; check the file is not empty")
    labels_by_group: dict[str, set[int]] = {}
    for i, e in enumerate(examples):
        if e.label not in (ALIGNED, VIOLATING):
            raise DataError(f"{source}: example {i} has label {e.label!r}; expected 1 (aligned) or 0 (violating)")
        labels_by_group.setdefault(e.group, set()).add(e.label)
    one_sided = [g for g, labels in labels_by_group.items() if len(labels) < 2]
    if one_sided:
        raise DataError(
            f"{source}: group {one_sided[0]!r} has only label {labels_by_group[one_sided[0]].pop()} "
            f"({len(one_sided)} such group(s)); every group needs at least one aligned (1) "
            "and one violating (0) answer"
        )


def make_folds(groups, *, n_folds: int = 2, val_fraction: float = 0.2, seed: int = 0) -> tuple[Fold, ...]:
    """Random group-wise k-fold: fold i tests on part i; the rest is split train/val."""
    groups = list(dict.fromkeys(groups))
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    parts = [order[i::n_folds] for i in range(n_folds)]
    folds = []
    for i in range(n_folds):
        rest = [g for j, p in enumerate(parts) if j != i for g in p]
        n_val = max(1, round(val_fraction * len(rest))) if len(rest) > 1 else 0
        folds.append(Fold(frozenset(rest[n_val:]), frozenset(rest[:n_val]), frozenset(parts[i])))
    return tuple(folds)
