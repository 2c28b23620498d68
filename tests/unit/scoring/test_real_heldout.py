"""REAL's held-out questions against ITI's validation questions (issue 20 §4)."""

from __future__ import annotations

import numpy as np
import torch

from real_lens.scoring.iti import split_groups
from real_lens.scoring.real_splits import split_heldout


def truthfulqa_like(n_questions: int = 160, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """A fold's train+val as the main job scores it: 160 questions (80 train + 80 val), each with 1-5 true and
    2-7 false answers in a row (TruthfulQA's mc2 targets: true answers first)."""
    rng = np.random.default_rng(seed + 1000)
    labels, groups = [], []
    for q in range(n_questions):
        n_true, n_false = int(rng.integers(1, 6)), int(rng.integers(2, 8))
        labels += [1] * n_true + [0] * n_false
        groups += [f"question {q}"] * (n_true + n_false)
    return torch.tensor(labels), groups


def test_with_one_seed_reals_heldout_questions_are_itis_validation_questions():
    """The claim of issue 20 §4: both draw ``default_rng(seed).permutation(n_groups)`` and take its first 20 %."""
    labels, groups = truthfulqa_like()
    for seed in range(20):
        _, held = split_heldout(labels, groups, how="group", fraction=0.2, seed=seed)
        _, val = split_groups(groups, val_fraction=0.2, seed=seed)
        assert {groups[i] for i in held.tolist()} == val
