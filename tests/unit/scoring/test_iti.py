"""ITI: a probe per module, scored by its validation accuracy; a planted head ranks first."""


import pytest
import torch

from real_lens.bank import ActivationBank
from real_lens.errors import ScoringError
from real_lens.scoring import get_scorer
from real_lens.scoring.iti import ProbeConfig, score_probe, split_groups
from real_lens.tasks.base import Example


def planted_bank(n_groups=40, per_group=5, shape=(3, 4, 8), planted=(1, 2)):
    gen = torch.Generator().manual_seed(1)
    examples = []
    for g in range(n_groups):
        for i in range(per_group):
            examples.append(Example(f"Q: q{g} A:", f" a{i}", int(i % 2 == 0), f"q{g}"))
    labels = torch.tensor([e.label for e in examples])
    acts = torch.randn(len(examples), *shape, generator=gen)
    acts[:, planted[0], planted[1], 0] += 2.5 * (2 * labels.float() - 1)  # a linear signal
    return ActivationBank(acts, tuple(examples), {"site": "head_z", "model": "toy", "task": "planted"})


def test_probe_ranks_planted_head_first():
    bank = planted_bank()
    scores = get_scorer("iti")(bank, seed=0)
    assert scores.scores.shape == (3, 4)
    assert scores.ranking()[0] == (1, 2)
    assert scores.scores[1, 2] > 0.9
    others = torch.cat([scores.scores.flatten()[:6], scores.scores.flatten()[7:]])
    assert others.max() < 0.8  # noise modules stay near chance
    assert scores.diagnostics["val_auc"][1, 2] > 0.95
    assert scores.meta["site"] == "head_z" and scores.meta["task"] == "planted" and scores.meta["seed"] == 0
    assert scores.config == {"val_fraction": 0.2, "C": 1.0, "max_iter": 1000, "standardize": True}


def test_probe_split_is_by_group_and_seeded():
    groups = [f"q{i // 3}" for i in range(60)]
    train, val = split_groups(groups, val_fraction=0.2, seed=3)
    assert not train & val and train | val == set(groups) and len(val) == 4
    assert split_groups(groups, val_fraction=0.2, seed=3) == (train, val)
    assert split_groups(groups, val_fraction=0.2, seed=4) != (train, val)


def test_probe_layer_site_and_fixed_val_groups():
    bank = planted_bank(shape=(3, 4, 8))
    acts = bank.acts[:, :, 2, :]  # [example, layer, d]: layer 1 carries the signal
    scores = score_probe(acts, bank.labels, bank.groups, val_groups={f"q{g}" for g in range(8)})
    assert scores.scores.shape == (3,) and scores.ranking()[0] == (1, None)
    assert scores.meta["split"]["n_val_groups"] == 8


def test_probe_rejects_bad_input():
    bank = planted_bank()
    with pytest.raises(ScoringError, match="at least 2 groups"):
        score_probe(bank.acts, bank.labels, ["one"] * len(bank.examples))
    with pytest.raises(ScoringError, match="labels must be 0"):
        score_probe(bank.acts, bank.labels * 2, bank.groups)
    with pytest.raises(ScoringError, match="one label and one group per example"):
        score_probe(bank.acts, bank.labels, bank.groups[:-1])
    with pytest.raises(ScoringError, match="val_fraction"):
        ProbeConfig(val_fraction=1.5)


def test_accuracy_ties_are_broken_by_val_auc_not_by_index():
    """On a small task many probes reach the same val accuracy; the val AUC, stated as the tie-break,
    orders them, so a top K is not simply the first layers. (Heads at accuracy 1.000 also have AUC
    1.000: those stay in index order.)"""
    torch.manual_seed(0)
    n_groups, n_layers, n_heads, d = 20, 4, 4, 4
    labels = torch.tensor([1, 0] * n_groups)
    groups = [f"q{i // 2}" for i in range(2 * n_groups)]
    acts = torch.randn(2 * n_groups, n_layers, n_heads, d)
    for layer in range(n_layers):  # noisy heads with margins from weak to strong: accuracies repeat, AUCs differ
        for head in range(n_heads):
            acts[:, layer, head, 0] += (labels.float() - 0.5) * 0.25 * (1 + (layer * n_heads + head) % 8)
    scores = score_probe(acts, labels, groups, progress=False)
    assert scores.meta["tie_break"] == "val_auc" and scores.tie_break == "val_auc"
    accuracy, auc = scores.scores.flatten().tolist(), scores.diagnostics["val_auc"].flatten().tolist()
    place = {layer * n_heads + head: i for i, (layer, head) in enumerate(scores.ranking())}
    pairs = [(a, b) for a in range(len(accuracy)) for b in range(len(accuracy))
             if accuracy[a] == accuracy[b] and auc[a] > auc[b]]
    assert pairs  # the data has accuracy ties with different AUCs, so index order would be wrong for some
    assert all(place[a] < place[b] for a, b in pairs)
