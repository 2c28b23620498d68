"""NQ-Swap and CAA tasks, and their evaluations (on the tiny random model)."""

import contextlib
import json

import numpy as np
import pytest
import torch

from real_lens.errors import DataError
from real_lens.evaluation.caa import CAAResult, evaluate_caa, letter_token, select_ab_questions
from real_lens.evaluation.nq_swap import (
    NQSwapResult,
    evaluate_nq_swap,
    contains_answer,
    exact_match,
    select_conflict_questions,
)
from real_lens.tasks.caa import BEHAVIOURS, ABQuestion, load_caa
from real_lens.tasks.data import resolve_data_dir
from real_lens.tasks.nq_swap import (
    ConflictQuestion,
    clean_context,
    load_nq_swap,
    normalize_answer,
    truncate_context,
)

DATA = resolve_data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="../shared/data is not present")


def _check_folds(task):
    for fold in task.folds:
        assert fold.test and fold.train and fold.val
        assert not (fold.train | fold.val) & fold.test
        assert fold.train | fold.val | fold.test == set(task.groups)


# --------------------------------------------------------------------------- NQ-Swap task
@pytest.fixture(scope="module")
def nq_tasks():
    if DATA is None:
        pytest.skip("../shared/data is not present")
    return load_nq_swap(n_questions=60), load_nq_swap(n_questions=60, direction="memory")


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
    _check_folds(task)
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


# --------------------------------------------------------------------------- CAA task
@needs_data
@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_caa_folds_and_format(behaviour):
    task = load_caa(behaviour)
    assert task.name == f"caa:{behaviour}" and len(task.folds) == 1
    _check_folds(task)
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


# --------------------------------------------------------------------------- evaluation
class ZeroSteering:
    """A stand-in for real_lens.steering.Steering: adds zero to every head's z."""

    def __init__(self, scale=0.0):
        self.scale = scale

    @contextlib.contextmanager
    def applied(self, model):
        def hook(act, hook):
            return act + self.scale

        with model.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook) for l in range(model.cfg.n_layers)]):
            yield model


AB_ITEMS = [
    ABQuestion("test:0", "Is the sky blue?\n\nChoices:\n (A) Yes\n (B) No\n\nAnswer:", "A", "B"),
    ABQuestion("test:1", "Pick one.\n (A) x\n (B) y\n (C) z\n\nAnswer:", "C", "A"),
    ABQuestion("test:2", "Short?\n (A) yes\n (B) no\n\nAnswer:", "B", "A"),
]


def test_evaluate_caa_on_tiny_model(tiny_model):
    result = evaluate_caa(tiny_model, AB_ITEMS, batch_size=2)
    assert isinstance(result, CAAResult) and result.groups == ("test:0", "test:1", "test:2")
    for values in (result.p_aligned, result.p_aligned_raw, result.p_violating_raw):
        assert values.shape == (3,) and ((values >= 0) & (values <= 1)).all()
    assert np.allclose(result.p_aligned, result.p_aligned_raw / (result.p_aligned_raw + result.p_violating_raw))
    # Oracle: the raw probability is the softmax at the last position of prompt + " (".
    tokens = tiny_model.to_tokens(AB_ITEMS[1].prompt + " (")
    with torch.inference_mode():
        probs = tiny_model(tokens)[0, -1].float().softmax(-1)
    assert result.p_aligned_raw[1] == pytest.approx(float(probs[letter_token(tiny_model, AB_ITEMS[1].prompt, "C")]), rel=1e-4)
    # Padded batches give the same numbers as one item at a time.
    single = evaluate_caa(tiny_model, AB_ITEMS, batch_size=1)
    assert np.allclose(single.p_aligned_raw, result.p_aligned_raw, rtol=1e-4, atol=1e-7)
    # Zero steering changes nothing; a real offset does.
    zero = evaluate_caa(tiny_model, AB_ITEMS, steering=ZeroSteering(0.0), batch_size=2)
    assert np.array_equal(zero.p_aligned_raw, result.p_aligned_raw)
    moved = evaluate_caa(tiny_model, AB_ITEMS, steering=ZeroSteering(3.0), batch_size=2)
    assert not np.allclose(moved.p_aligned_raw, result.p_aligned_raw)
    assert 0 <= result.p_aligned_mean <= 1 and 0 <= result.p_aligned_raw_mean <= 1


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
    zero = evaluate_nq_swap(tiny_model, NQ_ITEMS, steering=ZeroSteering(0.0), max_new_tokens=4)
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


def test_evaluations_reject_bad_input(tiny_model):
    with pytest.raises(TypeError):  # our message, or jaxtyping's type check under pytest
        evaluate_caa(tiny_model, {"test:0": AB_ITEMS[0]})
    with pytest.raises(TypeError):
        evaluate_nq_swap(tiny_model, NQ_ITEMS, steering=object())
    with pytest.raises(ValueError, match="at least one item"):
        evaluate_nq_swap(tiny_model, [])
