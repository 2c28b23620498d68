"""ModuleScores' one ordering rule: by score, then by the scorer's stated tie-break diagnostic, then by
module index; and ties_at says when equal scores decided a top K."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from real_lens.scoring import ModuleScores

# Few distinct values, so ties are common; NaN in the tie-break sorts last.
values = st.sampled_from([0.0, 0.5, 1.0])
secondary = st.sampled_from([0.1, 0.7, 0.9, math.nan])


@st.composite
def scored(draw):
    n_layers, n_heads = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    n = n_layers * n_heads
    scores = torch.tensor(draw(st.lists(values, min_size=n, max_size=n))).reshape(n_layers, n_heads)
    tie_break = draw(st.booleans())
    auc = torch.tensor(draw(st.lists(secondary, min_size=n, max_size=n))).reshape(n_layers, n_heads)
    return ModuleScores(scores, "iti", diagnostics={"val_auc": auc}, meta={"tie_break": "val_auc"} if tie_break else {})


def _oracle_order(s: ModuleScores) -> list[int]:
    flat, auc = s.scores.flatten().tolist(), s.diagnostics["val_auc"].flatten().tolist()
    use = s.meta.get("tie_break") == "val_auc"
    return sorted(range(len(flat)), key=lambda i: (-flat[i], -(auc[i] if use and not math.isnan(auc[i]) else
                                                                -math.inf if use else 0), i))


@settings(max_examples=200, deadline=None)
@given(scored(), st.integers(1, 16))
def test_ranking_select_and_ties_follow_one_rule(s, k):
    n_heads = s.scores.shape[1]
    expected = [(i // n_heads, i % n_heads) for i in _oracle_order(s)]
    assert s.ranking() == expected
    k = min(k, s.n_modules)
    assert list(s.select(k, strengths="uniform").modules) == expected[:k]
    flat = s.scores.flatten().tolist()
    kth = flat[_oracle_order(s)[k - 1]]
    ties = s.ties_at(k)
    n_tied = sum(v == kth for v in flat)
    n_inside = sum(flat[i] == kth for i in _oracle_order(s)[:k])
    assert (ties["n_tied"], ties["n_inside"], ties["decided_by_ties"]) == (n_tied, n_inside, n_tied > n_inside)
    assert ties["broken_by"] == ("val_auc" if s.meta.get("tie_break") else "module index")
    assert s.n_tied_at_top == sum(v == max(flat) for v in flat)


def test_a_named_tie_break_missing_from_the_diagnostics_falls_back_to_index():
    s = ModuleScores(torch.ones(2, 2), "x", meta={"tie_break": "nope"})
    assert s.tie_break is None and s.ranking() == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert s.ties_at(1) == {"k": 1, "score": 1.0, "n_tied": 4, "n_inside": 1, "decided_by_ties": True,
                            "broken_by": "module index"}
    assert not s.ties_at(4)["decided_by_ties"]
