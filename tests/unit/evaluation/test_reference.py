import math
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from real_lens.evaluation import TruthfulQAResult, evaluate_truthfulqa
from real_lens.evaluation.reference import (
    DEFAULT_LENGTH_C,
    LENGTH_C_GRID,
    choose_length_c,
    count_answer_tokens,
    length_only_mc,
    score_length_only,
)
from real_lens.tasks.truthfulqa import MC_PROMPT_STYLES, MCQuestion

# Answers with known byte lengths (the tiny model's tokenizer is one token per byte): the model
# reads " {answer}", so an answer of L ASCII characters is L + 1 tokens.
QUESTION = MCQuestion(
    question="Is the sky green?",
    prompt="Q: Is the sky green? A:",
    mc1_answers=("No", "Yes, always", "Maybe so"),
    mc1_labels=(1, 0, 0),
    mc2_answers=("No", "Not really", "Yes, always", "Maybe so"),
    mc2_labels=(1, 1, 0, 0),
)
TOKENS = {"No": 3, "Not really": 11, "Yes, always": 12, "Maybe so": 9}
# MC1: the true answer is shortest, so it wins for every c. Swap the labels and it loses.
LONG_TRUE = MCQuestion("Long?", "Q: Long? A:", ("Yes, always", "No"), (1, 0), ("Yes, always", "No"), (1, 0))


def _mc2_by_hand(c):
    true = math.exp(-3 * c) + math.exp(-11 * c)
    return true / (true + math.exp(-12 * c) + math.exp(-9 * c))


@pytest.mark.parametrize("style", MC_PROMPT_STYLES)
def test_token_counts_on_a_hand_made_question(tiny_model, style):
    assert count_answer_tokens(tiny_model, [QUESTION], mc_prompt=style) == [TOKENS]


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0, 4.0])
def test_length_only_scores_by_hand(tiny_model, c):
    result = length_only_mc([QUESTION, LONG_TRUE], tiny_model, c=c)
    assert isinstance(result, TruthfulQAResult)
    assert result.questions == (QUESTION.question, LONG_TRUE.question)
    assert result.mc1.tolist() == [1.0, 0.0]
    assert result.mc2[0] == pytest.approx(_mc2_by_hand(c), rel=1e-12)
    assert result.mc2[1] == pytest.approx(math.exp(-12 * c) / (math.exp(-12 * c) + math.exp(-3 * c)), rel=1e-12)


def test_mc2_limits_in_c():
    counts = [TOKENS]
    tiny_c = score_length_only([QUESTION], counts, c=1e-9).mc2[0]
    huge_c = score_length_only([QUESTION], counts, c=50.0).mc2[0]
    assert tiny_c == pytest.approx(0.5)  # 2 true of 4 answers
    assert huge_c == pytest.approx(1.0)  # the shortest answer is true
    mc2 = [score_length_only([QUESTION], counts, c=c).mc2[0] for c in (0.1, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(mc2, mc2[1:]))


class _Uniform:
    """A fake steering that zeroes the logits: every token gets log p = −log(d_vocab)."""

    @contextmanager
    def applied(self, model):
        with model.hooks(fwd_hooks=[("unembed.hook_out", lambda logits, hook: torch.zeros_like(logits))]):
            yield model


@pytest.mark.parametrize("style", ["plain", "instruction-qa"])
def test_matches_the_evaluation_of_a_uniform_model(tiny_model, style):
    """A model that predicts the uniform distribution IS the length-only scorer with c = log(d_vocab):
    the evaluation, with its shared prompt cache and batching, must count the same answer tokens."""
    questions = [QUESTION, LONG_TRUE,
                 MCQuestion("Why?", "Q: Why? A:", ("Because.", "No reason at all"), (1, 0),
                            ("Because.", "It is so.", "No reason at all"), (1, 1, 0))]
    uniform = evaluate_truthfulqa(tiny_model, questions, steering=_Uniform(), mc_prompt=style, progress=False)
    reference = length_only_mc(questions, tiny_model, c=math.log(tiny_model.cfg.d_vocab), mc_prompt=style)
    assert np.array_equal(uniform.mc1, reference.mc1)
    assert uniform.mc2 == pytest.approx(reference.mc2, abs=1e-6)


class _MergingTokenizerModel:
    """Characters, except ": " is one token: the prompt's final ":" merges with the answer's space."""

    cfg = SimpleNamespace(n_ctx=10_000)

    def to_tokens(self, text, padding_side="right", truncate=False):
        ids, i = [0], 0
        while i < len(text):
            if text[i:i + 2] == ": ":
                ids.append(1000)
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return torch.tensor([ids])


def test_counts_follow_the_evaluation_when_bpe_merges_across_the_boundary():
    # "...A:" + " No": the prompt's last token ":" becomes ": " in the full text, so the evaluation
    # scores from that token on (answer_start): ": ", "N", "o" = 3 tokens, not 2 beyond the prompt.
    counts = count_answer_tokens(_MergingTokenizerModel(), [QUESTION], mc_prompt="plain")
    assert counts == [{a: len(a) + 1 for a in TOKENS}]


def test_choose_length_c():
    # One question where larger c helps, judged on questions other than those reported.
    assert choose_length_c([QUESTION], [TOKENS]) == max(LENGTH_C_GRID)
    # Where c does not matter (equal lengths), ties go to the smallest c.
    flat = MCQuestion("Flat?", "Q: Flat? A:", ("ab", "cd"), (1, 0), ("ab", "cd"), (1, 0))
    assert choose_length_c([flat], [{"ab": 3, "cd": 3}]) == min(LENGTH_C_GRID)
    assert DEFAULT_LENGTH_C in LENGTH_C_GRID


def test_bad_input(tiny_model):
    with pytest.raises(ValueError, match="c is the log-prob"):
        score_length_only([QUESTION], [TOKENS], c=0.0)
    with pytest.raises(ValueError, match="no token count"):
        score_length_only([QUESTION], [{"No": 3}], c=1.0)
    with pytest.raises(ValueError, match="one token-count mapping per question"):
        score_length_only([QUESTION, LONG_TRUE], [TOKENS], c=1.0)
    with pytest.raises(TypeError):  # the annotation's check under pytest, or our own message otherwise
        length_only_mc({"q": QUESTION}, tiny_model)
    with pytest.raises(ValueError, match="at least one question"):
        length_only_mc([], tiny_model)
