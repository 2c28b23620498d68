"""NQ-Swap evaluation on the tiny random model: greedy answers, exact match, folds."""


import pytest

from real_lens.evaluation.caa import select_ab_questions
from real_lens.evaluation.nq_swap import (
    NQSwapResult,
    evaluate_nq_swap,
    exact_match,
    select_conflict_questions,
)
from real_lens.tasks.caa import load_caa
from real_lens.tasks.nq_swap import (
    ConflictQuestion,
)
from tests.helpers import ShiftSteering, needs_data

NQ_ITEMS = [
    ConflictQuestion("who wrote it", "context: Bob wrote it .\nquestion: who wrote it?\nanswer:", ("Bob",), ("Alice",), "context"),
    ConflictQuestion("where", "context: It is in Rome .\nquestion: where?\nanswer:", ("Rome",), ("Paris", "Lyon"), "memory"),
]


def test_evaluate_nq_swap_on_tiny_model(tiny_model):
    result = evaluate_nq_swap(tiny_model, NQ_ITEMS, max_new_tokens=4)
    assert isinstance(result, NQSwapResult) and len(result.predictions) == 2
    for values in (result.em_context, result.em_memory, result.em_aligned,
                   result.contains_context, result.contains_memory, result.contains_aligned):
        assert values.shape == (2,) and set(values.tolist()) <= {0.0, 1.0}
    assert list(result.em_aligned) == [result.em_context[0], result.em_memory[1]]
    assert list(result.contains_aligned) == [result.contains_context[0], result.contains_memory[1]]
    assert (result.contains_context >= result.em_context).all()
    for i, (prediction, item) in enumerate(zip(result.predictions, NQ_ITEMS)):
        assert result.em_context[i] == exact_match(prediction, item.context_answers)
    assert 0 <= result.em_context_mean <= 1
    zero = evaluate_nq_swap(tiny_model, NQ_ITEMS, steering=ShiftSteering(0.0), max_new_tokens=4)
    assert zero.predictions == result.predictions


@needs_data
def test_select_items_follow_the_folds(nq_tasks):
    task, _ = nq_tasks
    items = select_conflict_questions(task, task.folds[0].test)
    assert {q.group for q in items} == task.folds[0].test
    assert len(items) == sum(len(task.eval_data["qa"][g]) for g in task.folds[0].test)
    caa = load_caa("refusal")
    ab = select_ab_questions(caa, caa.folds[0].test)
    assert [q.group for q in ab] == [f"test:{i}" for i in range(50)]
    assert {q.group for q in select_ab_questions(caa, caa.folds[0].val)} == caa.folds[0].val
    with pytest.raises(ValueError, match="no A/B item"):
        select_ab_questions(caa, ["generate:999999"])


def test_evaluate_nq_swap_rejects_bad_input(tiny_model):
    with pytest.raises(TypeError):  # our message, or jaxtyping's type check under pytest
        evaluate_nq_swap(tiny_model, NQ_ITEMS, steering=object())
    with pytest.raises(ValueError, match="at least one item"):
        evaluate_nq_swap(tiny_model, [])
