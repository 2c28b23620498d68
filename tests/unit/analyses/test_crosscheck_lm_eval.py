"""The lm-eval cross-check's pure helpers (no lm-eval needed: the harness runs only in its own venv)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses import crosscheck_lm_eval as cc
from real_lens.errors import RealLensError
from real_lens.evaluation.truthfulqa import score_mc2
from real_lens.tasks.truthfulqa import MCQuestion


def _question(text="Q?", mc1_labels=(1, 0, 0)):
    answers = tuple(f"answer {i}" for i in range(len(mc1_labels)))
    return MCQuestion(text, f"Q: {text} A:", answers, mc1_labels, answers + ("extra true",), (1, 0, 0, 1))


def test_hub_records_have_the_hub_schema_and_keep_order():
    records = cc.build_hub_records([_question("first?"), _question("second?")])
    assert [r["question"] for r in records] == ["first?", "second?"]
    assert records[0]["mc1_targets"] == {"choices": ["answer 0", "answer 1", "answer 2"], "labels": [1, 0, 0]}
    assert records[0]["mc2_targets"]["labels"] == [1, 0, 0, 1]
    assert json.loads(json.dumps(records)) == records  # plain JSON, as the harness's "json" loader reads it


@pytest.mark.parametrize("labels", [(0, 1, 0), (1, 1, 0)])
def test_hub_records_refuse_mc1_targets_the_harness_would_misread(labels):
    with pytest.raises(ValueError, match="true answer first"):
        cc.build_hub_records([_question(mc1_labels=labels)])


def test_agreement_counts_mc1_and_measures_mc2():
    s = cc.summarise_agreement([1, 0, 1], [0.9, 0.2, 0.5], [1, 1, 1], [0.9, 0.2 + 1e-6, 0.7])
    assert s["n"] == 3 and s["mc1_equal"] == 2 and s["mc1_differs"] == [1]
    assert s["max_abs_dmc2"] == pytest.approx(0.2) and s["mc2_differs"] == [2]
    assert s["mc1_mean"] == pytest.approx([2 / 3, 1.0]) and s["mc2_mean"] == pytest.approx([1.6 / 3, 1.8 / 3])


def test_mc2_logit_is_the_log_odds_of_true_vs_false_answers():
    true, false = [-3.0, -40.0], [-1.0, -2.5, -60.0]
    mc2 = score_mc2(true, false)
    expected = float(torch.logsumexp(torch.tensor(true, dtype=torch.float64), 0)
                     - torch.logsumexp(torch.tensor(false, dtype=torch.float64), 0))
    assert cc.mc2_logit([mc2])[0] == pytest.approx(expected, abs=1e-9)
    assert np.isfinite(cc.mc2_logit([0.0, 1.0])).all()


def test_agreement_refuses_lists_of_different_lengths():
    with pytest.raises(ValueError, match="one length"):
        cc.summarise_agreement([1], [0.5], [1, 0], [0.5, 0.5])


def test_mc1_ties_count_only_a_true_answer_level_with_the_best_false_one():
    assert cc.count_mc1_ties([[-1.0, -1.0, -5.0], [-1.0, -2.0], [-3.0, -1.0]]) == 1


def test_the_harness_side_imports_nothing_of_the_project():
    """The lm-eval venv runs this file as a script; at import it must need only the standard library and numpy."""
    path = Path(cc.__file__)
    code = (f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('cc', {str(path)!r}); "
            "module = sys.modules['cc'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'real_lens', 'torch', 'transformer_lens', "
            "'matplotlib', 'analyses'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_a_missing_harness_python_is_a_user_error():
    with pytest.raises(RealLensError, match="lm-eval-python"):
        cc.main(["--lm-eval-python", "/nonexistent/bin/python"])
