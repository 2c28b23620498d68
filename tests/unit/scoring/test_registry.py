"""The table of scorers: every built-in method is registered under its name."""

import csv
import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from real_lens.bank import ActivationBank
from real_lens.cli import main
from real_lens.errors import ScoringError
from real_lens.scoring import SCORERS, get_scorer, score_modules, scorer_spec
from real_lens.tasks.base import Example
from tests.helpers import needs_data


def test_every_baseline_is_registered():
    for name in ("iti", "patching", "attribution", "random"):
        assert callable(get_scorer(name))
    assert {"iti", "patching", "attribution", "random"} <= set(SCORERS)


def test_scoring_random_module_does_not_shadow_stdlib_random():
    import real_lens.scoring.random as ours

    stdlib = importlib.import_module("random")
    assert stdlib is not ours and "real_lens" not in (stdlib.__file__ or "")
    assert 0 <= stdlib.random() < 1
    assert sys.modules["random"] is stdlib


# --------------------------------------------------------------------------- a new scorer in one file
def example_scorer_code() -> str:
    """The complete example scorer of docs/library.md ("Adding a scoring method")."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "library.md").read_text()
    match = re.search(r"<!-- example-scorer[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/library.md lost its example-scorer block"
    return match.group(1)


@pytest.fixture
def example_scorer():
    code = example_scorer_code()
    assert len(code.strip().splitlines()) <= 30  # "a 30-line example"
    namespace: dict = {}
    exec(compile(code, "docs/library.md", "exec"), namespace)
    try:
        yield namespace["score_mean_difference"]
    finally:
        SCORERS.pop("mean-difference", None)


def planted_bank(planted=(1, 2)) -> ActivationBank:
    examples = tuple(Example(f"Q: q{i // 2} A:", f" a{i}", i % 2, f"q{i // 2}") for i in range(40))
    acts = torch.randn(len(examples), 2, 4, 8, generator=torch.Generator().manual_seed(0))
    acts[:, planted[0], planted[1], 0] += 3.0 * (2 * torch.tensor([e.label for e in examples]).float() - 1)
    return ActivationBank(acts, examples, {"site": "head_z", "model": "tiny-llama", "task": "toy"})


def test_the_docs_example_scorer_registers_and_ranks_a_planted_head_first(example_scorer):
    spec = scorer_spec("mean-difference")
    assert spec.score is example_scorer and spec.shardable and not spec.needs_model and spec.strength == "uniform"
    scores = score_modules(planted_bank(), "mean-difference")
    assert scores.ranking()[0] == (1, 2)
    part = example_scorer(planted_bank(), modules=range(3))  # a torchrun slice: the rest NaN
    assert part.scores.flatten()[:3].isfinite().all() and part.scores.flatten()[3:].isnan().all()


@needs_data
def test_the_docs_example_scorer_runs_through_the_main_job(example_scorer, tmp_path, tiny_model, capsys):
    argv = ["--quiet", "run", "--quick", "--model", "tiny-llama", "--methods", "iti,mean-difference,random",
            "--folds", "0", "--out", str(tmp_path)]
    assert main(argv) == 0
    capsys.readouterr()
    with open(tmp_path / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "mean-difference"]
    assert rows and all(r["split"] == "test" and r["k"] == "2" and float(r["alpha"]) > 0 for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {("mean-difference", "random null"), ("mean-difference", "unsteered")} <= {
        (r["a"], r["b"]) for r in summary["paired"]}


def test_every_consumer_reads_the_spec_not_the_signature():
    """Whether a scorer splits over ranks, gets a progress flag or options comes from its ScorerSpec."""
    from real_lens.distributed import Ranks, is_sharded

    two = Ranks(rank=0, world_size=2, local_rank=0)
    assert [is_sharded(m, two) for m in ("real", "iti", "random")] == [True, True, False]
    with pytest.raises(ScoringError, match="not split across processes"):
        is_sharded("patching", two)
    assert [scorer_spec(m).needs_model for m in ("patching", "attribution", "iti")] == [True, True, False]
    with pytest.raises(ScoringError, match="takes no options"):
        score_modules(planted_bank(), "random", n_pairs=3)
