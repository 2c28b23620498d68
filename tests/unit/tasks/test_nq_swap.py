"""The NQ-Swap task: examples, labels, prompts, contexts and answers."""

import json

import pytest

from real_lens.errors import DataError
from real_lens.evaluation.nq_swap import (
    contains_answer,
    exact_match,
)
from real_lens.tasks.nq_swap import (
    clean_context,
    load_nq_swap,
    normalize_answer,
    truncate_context,
)
from tests.helpers import check_folds, needs_data


def test_nq_swap_examples_labels_and_prompt(nq_tasks):
    task, _ = nq_tasks
    assert task.name == "nq-swap" and len(task.groups) == 60
    for group in task.groups:
        for item in task.eval_data["qa"][group]:
            pair = [e for e in task.examples if e.group == group and e.prompt == item.prompt]
            assert {(e.answer, e.label) for e in pair} == {
                (" " + item.context_answers[0], 1), (" " + item.memory_answers[0], 0)
            }
            assert item.prompt.startswith("context: ") and item.prompt.endswith(f"\nquestion: {group}?\nanswer:")
            context = item.prompt[len("context: "):item.prompt.index("\nquestion: ")]
            assert "<" not in context.replace("< ", "") and item.context_answers[0] in context
            assert len(context.split()) <= 150
    check_folds(task)
    assert len(task.folds) == 2
    assert task.eval_data["n_dropped_same_answer"] == 0 and task.eval_data["n_rows"] == 4746


def test_nq_swap_memory_direction_swaps_only_the_labels(nq_tasks):
    context, memory = nq_tasks
    assert memory.name == "nq-swap-memory"
    assert [(e.prompt, e.answer, e.group) for e in context.examples] == [(e.prompt, e.answer, e.group) for e in memory.examples]
    assert [1 - e.label for e in context.examples] == [e.label for e in memory.examples]
    assert context.folds == memory.folds
    item = next(iter(memory.eval_data["qa"].values()))[0]
    assert item.direction == "memory" and item.aligned_answers == item.memory_answers


@needs_data
def test_nq_swap_full_file_counts_and_truncation():
    full = load_nq_swap(max_context_words=None)
    assert len(full.groups) == 1667 and full.eval_data["n_dropped_long"] == 0
    assert full.eval_data["n_dropped_duplicates"] == 16
    short = load_nq_swap(max_context_words=40)
    assert short.eval_data["n_dropped_long"] > 0
    n_items = sum(len(v) for v in short.eval_data["qa"].values())
    assert n_items + short.eval_data["n_dropped_long"] + short.eval_data["n_dropped_duplicates"] == 4746
    assert len(short.examples) == 2 * n_items


def test_clean_and_truncate_context():
    raw = '<Table> <Tr> <Th colspan="2"> Cast </Th> </Tr> <Td colspan="3""> N / A < 0.1 % </Td> <Li> x </Li> <Th'
    assert clean_context(raw) == "Cast N / A < 0.1 % x"
    text = "one two three four five"
    assert truncate_context(text, "two three", 3) == "one two three"
    assert truncate_context(text, "three four", 3) is None  # the answer would be cut: dropped
    assert truncate_context(text, "fiv", None) is None  # whole words only
    assert truncate_context(text, "five", None) == text


@pytest.mark.parametrize("raw, expected", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  an   Apple,  a day! ", "apple day"),
    ("U.S.A.", "usa"),
    ("Theatre of the Absurd", "theatre of absurd"),
    ("A", ""),
    ("Hugh S. Johnson", "hugh s johnson"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_rule():
    assert exact_match("775 episodes.\ncontext: ...", ["775"])
    assert exact_match("\n The Beatles", ["Beatles"])
    assert not exact_match("7750", ["775"])
    assert not exact_match("It has 775", ["775"])
    assert exact_match("Los Angeles", ["Pittsburgh", "Los Angeles"])
    assert not exact_match("anything", ["The"])  # a gold that normalises to nothing never matches
    assert contains_answer("The song was written by Benny.", ["benny"])
    assert contains_answer("It has 775", ["775"]) and not contains_answer("It has 7750", ["775"])
    assert not contains_answer("anything", ["The"])


def test_nq_swap_errors(tmp_path):
    with pytest.raises(DataError, match="direction 'parametric'.*context, memory"):
        load_nq_swap(direction="parametric")
    with pytest.raises(DataError, match=r"NQ-Swap file nq_swap_dev.jsonl not found at .*nq_swap_dev.jsonl; pass --data-dir"):
        load_nq_swap(tmp_path)
    (tmp_path / "nq_swap").mkdir()
    (tmp_path / "nq_swap" / "nq_swap_dev.jsonl").write_text(json.dumps({"question": "q", "sub_context": "c"}) + "\n")
    with pytest.raises(DataError, match="row 0: expected fields question, sub_context, sub_answer, org_answer"):
        load_nq_swap(tmp_path)
