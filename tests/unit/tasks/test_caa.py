"""The CAA behaviour tasks: folds, formats, the aligned side, errors."""

import json

import pytest

from real_lens.errors import DataError
from real_lens.tasks.caa import BEHAVIOURS, load_caa
from tests.helpers import DATA, check_folds, needs_data


@needs_data
@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_caa_folds_and_format(behaviour):
    task = load_caa(behaviour)
    assert task.name == f"caa:{behaviour}" and len(task.folds) == 1
    check_folds(task)
    fold = task.folds[0]
    assert fold.test == {g for g in task.eval_data["ab"] if g.startswith("test:")} == {f"test:{i}" for i in range(50)}
    assert set(task.eval_data["ab"]) == set(task.groups)  # val (generate) items are evaluable too
    assert all(g.startswith("generate:") for g in fold.train | fold.val)
    assert abs(len(fold.val) - 0.2 * (len(fold.train) + len(fold.val))) <= 1
    assert task.eval_data["n_test_overlap"] == 0
    test_prompts = {e.prompt for e in task.select(fold.test)}
    assert not test_prompts & {e.prompt for e in task.select(fold.train | fold.val)}
    for e in task.examples:
        assert e.prompt.endswith("\n\nAnswer:") and e.answer in {f" ({c})" for c in "ABCDEFGH"}


@needs_data
def test_caa_aligned_side_follows_the_readme():
    with open(DATA / "caa/generate/sycophancy/generate_dataset.json") as f:
        rows = json.load(f)
    i = next(i for i, r in enumerate(rows) if r["answer_not_matching_behavior"] == "(B)")
    task = load_caa("sycophancy")
    pair = {e.answer: e.label for e in task.examples if e.group == f"generate:{i}"}
    assert pair == {" (B)": 1, " (A)": 0}
    assert next(e for e in task.examples if e.group == f"generate:{i}").prompt == rows[i]["question"] + "\n\nAnswer:"

    with open(DATA / "caa/generate/refusal/generate_dataset.json") as f:
        rows = json.load(f)
    refusal = load_caa("refusal")
    for i in (0, 1, 2):
        pair = {e.answer: e.label for e in refusal.examples if e.group == f"generate:{i}"}
        assert pair == {" " + rows[i]["answer_matching_behavior"]: 1, " " + rows[i]["answer_not_matching_behavior"]: 0}


@needs_data
def test_caa_survival_instinct_keeps_extra_letters():
    task = load_caa("survival-instinct")
    assert {e.answer for e in task.examples} >= {" (C)", " (D)", " (H)"}
    assert any(q.aligned not in "AB" for q in task.eval_data["ab"].values())


def test_caa_errors(tmp_path):
    with pytest.raises(DataError, match="unknown CAA behaviour 'flattery'; expected one of: sycophancy, hallucination"):
        load_caa("flattery")
    with pytest.raises(DataError, match="CAA refusal generate set not found at .*generate_dataset.json"):
        load_caa("refusal", tmp_path)
    for part, name in (("generate", "generate_dataset.json"), ("test", "test_dataset_ab.json")):
        (tmp_path / "caa" / part / "refusal").mkdir(parents=True)
        rows = [{"question": "Q?", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "B"}]
        (tmp_path / "caa" / part / "refusal" / name).write_text(json.dumps(rows))
    with pytest.raises(DataError, match="item 0: answer_not_matching_behavior is 'B'; expected a letter choice"):
        load_caa("refusal", tmp_path)


def test_caa_drops_generate_items_that_repeat_a_test_question(tmp_path):
    def item(q, a="(A)", b="(B)"):
        return {"question": q, "answer_matching_behavior": a, "answer_not_matching_behavior": b}

    for part, name, rows in (
        ("generate", "generate_dataset.json", [item("Q1\n (A) x\n (B) y"), item("Q2"), item("Q3"), item("Q4", "(B)", "(A)")]),
        ("test", "test_dataset_ab.json", [item("Q1 \n (A) x\n (B)  y")]),
    ):
        (tmp_path / "caa" / part / "myopic-reward").mkdir(parents=True)
        (tmp_path / "caa" / part / "myopic-reward" / name).write_text(json.dumps(rows))
    task = load_caa("myopic-reward", tmp_path)
    assert task.eval_data["n_test_overlap"] == 1
    assert "generate:0" not in task.groups and len(task.groups) == 4
    assert task.eval_data["ab"]["test:0"].aligned == "B"  # myopic-reward: not-matching is aligned
