"""Helpers several test modules share (fixtures live in tests/conftest.py)."""

import contextlib

import pytest

from real_lens.models import TINY_MODELS
from real_lens.tasks.data import resolve_data_dir

DATA = resolve_data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="../shared/data is not present")
# A per-head path test runs on each tiny architecture: the ``tiny_model`` fixture is tiny-llama, then tiny-qwen2.
each_tiny_model = pytest.mark.parametrize("tiny_model", TINY_MODELS, indirect=True)


def check_folds(task) -> None:
    """Every fold has train, val and test questions, test is disjoint from the rest, and together they are the task."""
    for fold in task.folds:
        assert fold.test and fold.train and fold.val
        assert not (fold.train | fold.val) & fold.test
        assert fold.train | fold.val | fold.test == set(task.groups)


class ShiftSteering:
    """A stand-in for real_lens.steering.Steering: adds ``scale`` to every head's z (0: a steering that does nothing)."""

    def __init__(self, scale=0.0):
        self.scale = scale

    @contextlib.contextmanager
    def applied(self, model):
        def hook(act, hook):
            return act + self.scale

        with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook) for layer in range(model.cfg.n_layers)]):
            yield model
