"""`real-published`: the REAL release's ranking files, read without executing their pickle.

The files are made here in the release's own format (``np.save`` of an object array of
``((layer, head), relevance)`` rows); no test needs the release.
"""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from real_lens.bank import ActivationBank
from real_lens.errors import ScoringError
from real_lens.scoring import SCORERS, method_names, score_modules
from real_lens.scoring.published import load_published_ranking, read_ranking_file
from real_lens.tasks.base import Example


def save_ranking(path, rows):
    """As OneForAll.py saves one: np.save of np.array(rows, dtype=object)."""
    array = np.empty((len(rows), 2), dtype=object)
    for i, (key, value) in enumerate(rows):
        array[i, 0], array[i, 1] = key, value
    np.save(path, array)
    return path


def ranking_rows(n_layers, n_heads, *, seed=0, shuffle=True):
    rng = random.Random(seed)
    rows = [((layer, head), rng.uniform(0.4, 0.9)) for layer in range(n_layers) for head in range(n_heads)]
    if shuffle:
        rng.shuffle(rows)
    return rows


def toy_bank(shape=(3, 4, 8)):
    examples = tuple(Example(f"Q: q{i // 2} A:", f" a{i}", i % 2, f"q{i // 2}") for i in range(8))
    return ActivationBank(torch.randn(len(examples), *shape), examples, {"site": "head_z", "model": "toy"})


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_every_row_lands_on_its_head(tmp_path):
    rows = ranking_rows(3, 4)
    scores = load_published_ranking(save_ranking(tmp_path / "r.npy", rows))
    assert scores.method == "real-published" and tuple(scores.scores.shape) == (3, 4)
    for (layer, head), value in rows:
        assert float(scores.scores[layer, head]) == pytest.approx(value, abs=1e-7)
    best = max(rows, key=lambda r: r[1])
    assert scores.ranking()[0] == best[0]


def test_strengths_are_score_over_max_as_the_release_normalises(tmp_path):
    rows = ranking_rows(2, 5, seed=3)
    scores = load_published_ranking(save_ranking(tmp_path / "r.npy", rows))
    top = sorted(rows, key=lambda r: -r[1])[:4]
    selection = scores.select(4)  # the method's own rule
    assert list(selection.modules) == [key for key, _ in top]
    assert list(selection.strengths) == pytest.approx([v / top[0][1] for _, v in top], abs=1e-6)


def test_numpy_scalars_and_integers_are_admitted(tmp_path):
    rows = [((np.int64(layer), np.int32(head)), np.float64(0.5 + 0.01 * (2 * layer + head)))
            for layer in range(2) for head in range(2)]
    scores = load_published_ranking(save_ranking(tmp_path / "r.npy", rows))
    assert scores.scores[1, 1].item() == pytest.approx(0.53)


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    rows = ranking_rows(1, 2)
    rows[0] = ((0, 0), Exploit())
    path = save_ranking(tmp_path / "evil.npy", rows)
    with pytest.raises(ScoringError) as exc:
        load_published_ranking(path)
    assert "refused" in one_line(exc) and "system" in one_line(exc)
    assert not marker.exists()
    np.load(path, allow_pickle=True)  # the oracle: numpy's own loader does run it
    assert marker.exists()


@pytest.mark.parametrize("payload", [
    (eval, ("1+1",)),  # builtins.eval
    (os.getcwd, ()),  # any other callable, harmless or not
])
def test_any_other_callable_is_refused(tmp_path, payload):
    class Call:
        def __reduce__(self):
            return payload

    path = save_ranking(tmp_path / "r.npy", [((0, 0), Call())])
    with pytest.raises(ScoringError, match="refused to read"):
        read_ranking_file(path)


def test_a_pickled_object_dtype_scalar_is_refused(tmp_path):
    # numpy scalars may only be numeric: an object-dtype scalar could smuggle any object in
    path = tmp_path / "r.npy"
    save_ranking(path, [((0, 0), 0.5)])
    data = path.read_bytes()
    header_end = data.index(b"\n") + 1
    evil = pickle.dumps(np.array([[(0, 0), np.float64(0.5)]], dtype=object), protocol=2).replace(
        b"f8", b"O8")  # the scalar's dtype rewritten to object
    path.write_bytes(data[:header_end] + evil)
    with pytest.raises(ScoringError, match="refused to read|corrupt"):
        read_ranking_file(path)


def test_not_a_ranking_is_one_line(tmp_path):
    numeric = tmp_path / "numeric.npy"
    np.save(numeric, np.zeros((4, 2)))
    with pytest.raises(ScoringError, match="float64 array of shape") as exc:
        read_ranking_file(numeric)
    one_line(exc)
    text = tmp_path / "text.npy"
    text.write_text("not numpy")
    with pytest.raises(ScoringError, match="not a readable .npy file"):
        read_ranking_file(text)
    truncated = save_ranking(tmp_path / "cut.npy", ranking_rows(2, 2))
    truncated.write_bytes(truncated.read_bytes()[:-20])
    with pytest.raises(ScoringError, match="corrupt"):
        read_ranking_file(truncated)
    with pytest.raises(ScoringError, match="does not exist"):
        read_ranking_file(tmp_path / "missing.npy")


@pytest.mark.parametrize("rows, message", [
    ([((0, 0), 0.5), ((0, 0), 0.6)], "lists head L0H0 twice"),
    ([((0, 0), 0.5), ((1, 1), 0.6)], "covers 2 of the 2 x 2 heads"),
    ([((0, "1"), 0.5)], "expected a \\(layer, head\\) pair"),
    ([((0, -1), 0.5)], "expected a \\(layer, head\\) pair"),
    ([((0, 0), float("nan"))], "expected a finite number"),
    ([((0, 0), "0.5")], "expected a finite number"),
])
def test_malformed_rows_are_one_line(tmp_path, rows, message):
    with pytest.raises(ScoringError, match=message) as exc:
        load_published_ranking(save_ranking(tmp_path / "r.npy", rows))
    one_line(exc)


def test_a_ranking_for_another_model_is_refused(tmp_path, tiny_model):
    path = save_ranking(tmp_path / "r.npy", ranking_rows(3, 4))
    assert tuple(load_published_ranking(path, bank=toy_bank((3, 4, 8))).scores.shape) == (3, 4)
    with pytest.raises(ScoringError, match=r"3 layers x 4 heads \(12\), but the bank has 2 x 4 \(8\); use the ranking"):
        load_published_ranking(path, bank=toy_bank((2, 4, 8)))
    n_layers, n_heads = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    fits = save_ranking(tmp_path / "fits.npy", ranking_rows(n_layers, n_heads))
    assert tuple(load_published_ranking(fits, model=tiny_model).scores.shape) == (n_layers, n_heads)
    with pytest.raises(ScoringError, match="use the ranking file made for this model") as exc:
        load_published_ranking(path, model=tiny_model)
    one_line(exc)


def test_registered_as_a_scorer_whose_scores_come_from_a_file(tmp_path):
    assert "real-published" in method_names()
    spec = SCORERS["real-published"]
    assert spec.from_file and spec.strength == "score" and not spec.needs_model
    assert not any(s.from_file for name, s in SCORERS.items() if name != "real-published")
    path = save_ranking(tmp_path / "r.npy", ranking_rows(3, 4))
    bank = toy_bank()
    via_registry = score_modules(bank, "real-published", path=str(path))
    assert torch.equal(via_registry.scores, load_published_ranking(path).scores)
    with pytest.raises(ScoringError, match="give path=FILE"):
        score_modules(bank, "real-published")
    with pytest.raises(ScoringError, match="use the ranking file made for this model"):
        score_modules(toy_bank((2, 4, 8)), "real-published", path=str(path))
