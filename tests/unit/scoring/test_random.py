"""The random scorer: a seeded permutation."""


import torch

from real_lens.bank import ActivationBank
from real_lens.scoring import get_scorer
from real_lens.scoring.random import score_random
from real_lens.tasks.base import Example


def toy_bank(site="head_z", *, model="tiny-llama", shape=(2, 4, 16)):
    examples = tuple(Example(f"Q: q{i // 2} A:", f" a{i}", i % 2, f"q{i // 2}") for i in range(10))
    acts = torch.randn(len(examples), *shape, generator=torch.Generator().manual_seed(0))
    return ActivationBank(acts, examples, {"site": site, "model": model, "task": "toy"})


def test_random_scores_are_a_seeded_permutation():
    a = score_random((3, 5), seed=0)
    assert a.shape == (3, 5)
    assert torch.equal(a.flatten().sort().values, torch.arange(1, 16).float() / 15)
    assert torch.equal(a, score_random((3, 5), seed=0))
    assert not torch.equal(a, score_random((3, 5), seed=1))
    scores = get_scorer("random")(toy_bank(), seed=2)
    assert torch.equal(scores.scores, score_random((2, 4), seed=2)) and scores.meta["seed"] == 2
    assert scores.top_k(3).strengths[0] == 1.0
