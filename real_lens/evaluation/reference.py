"""A content-blind reference for TruthfulQA MC: a scorer that only counts answer tokens.

It gives every answer log p = −c · (number of answer tokens), c > 0, and scores MC1/MC2 from
those log-probs exactly as :func:`~real_lens.evaluation.truthfulqa.evaluate_truthfulqa` scores
a model's (same answer tokens: those of ``prompt + " " + answer`` beyond the prompt's tokens,
under the same MC prompt). A steering whose MC gain only reaches this reference may have
done no more than destroy the model's use of content, leaving a preference for short answers.

- MC1 does not depend on c: the true answer wins when it is strictly shorter than every false
  one (ties count as 0, as in ``score_mc1``).
- MC2 does: c → 0 gives the share of true answers among all, c → ∞ the share of true answers
  among the shortest ones. ``LENGTH_C_GRID`` spans the per-token log-probs a language model
  gives answer text; :func:`choose_length_c` picks c on questions the reference is not reported
  on (a fold's val questions), the way a steering's K and α are chosen, so the test-question
  reference is not tuned on the test questions. ``DEFAULT_LENGTH_C`` = 2 nats per token is
  used when nothing chooses c (see the constant for why).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..tasks.truthfulqa import ANSWER_FORMAT, DEFAULT_MC_PROMPT, MCPrompt, MCQuestion
from ..tokens import tokenize
from .truthfulqa import TruthfulQAResult, answer_start, question_answers, resolve_mc_prompt, score_question

# The c of the grid: 0.5–4 nats per answer token, confident to flat next-token predictions;
# larger c changes MC2 little (it is already near the shortest-answers limit).
LENGTH_C_GRID = (0.5, 1.0, 2.0, 4.0)
# Without a choice on held-out questions: 2 nats per token, about what a language model pays per
# answer token (measured: unsteered SmolLM2-135M-Instruct, 1.81 nats per token over the 2,711
# answer tokens of the first 30 fold-0 test questions, instruction-qa prompt). Measured with that
# model's tokenizer and prompt, MC2 hardly depends on c from 1 to 8: whole test halves 0.497–0.499
# (fold 0, 409 questions) and 0.468–0.470 (fold 1, 408), both highest at c = 2; c = 0.5 gives
# 0.483 and 0.457. MC1 (no c) is 0.215 and 0.154.
DEFAULT_LENGTH_C = 2.0


def count_answer_tokens(
    model, questions: Sequence[MCQuestion], *, mc_prompt: MCPrompt | str = DEFAULT_MC_PROMPT
) -> list[dict[str, int]]:
    """Per question, the number of tokens of each of its answers (MC1 and MC2 targets), as scored
    by the evaluation: ``prompt + " {answer}"`` tokenised by ``model`` (anything with
    ``to_tokens`` and ``cfg.n_ctx``, e.g. the bridge), minus the tokens it shares with the prompt."""
    questions = _check_questions(questions)
    mc_prompt = resolve_mc_prompt(mc_prompt)
    counts = []
    for q in questions:
        prompt = mc_prompt.format(q.question)
        prompt_tokens = tokenize(model, prompt)
        answers = dict.fromkeys(q.mc1_answers + q.mc2_answers)
        row = {}
        for answer in answers:
            full = tokenize(model, prompt + ANSWER_FORMAT.format(answer=answer))
            row[answer] = len(full) - answer_start(prompt_tokens, full)
        counts.append(row)
    return counts


def score_length_only(
    questions: Sequence[MCQuestion], counts: Sequence[dict[str, int]], *, c: float = DEFAULT_LENGTH_C
) -> TruthfulQAResult:
    """MC1/MC2 of every question with log p(answer) = −c · ``counts[i][answer]``; model-free."""
    questions = _check_questions(questions)
    if not (c > 0 and np.isfinite(c)):
        raise ValueError(f"c is the log-prob charged per answer token and must be a finite value > 0; got {c}")
    if len(counts) != len(questions):
        raise ValueError(f"need one token-count mapping per question ({len(questions)}); found {len(counts)}")
    mc1, mc2, mc2_norm, records = [], [], [], []
    for q, row in zip(questions, counts):
        missing = [a for a in dict.fromkeys(q.mc1_answers + q.mc2_answers) if a not in row]
        if missing:
            raise ValueError(
                f"no token count for answer {missing[0]!r} of question {q.question!r}; "
                "build counts with count_answer_tokens on the same questions"
            )
        logprobs = {a: -c * n for a, n in row.items()}
        s1, s2 = score_question(q, logprobs)
        norm, record = question_answers(q, logprobs, row)
        mc1.append(s1)
        mc2.append(s2)
        mc2_norm.append(norm)
        records.append(record)
    return TruthfulQAResult(tuple(q.question for q in questions), np.array(mc1), np.array(mc2), np.array(mc2_norm),
                            tuple(records))


def length_only_mc(
    questions: Sequence[MCQuestion],
    model,
    *,
    c: float = DEFAULT_LENGTH_C,
    mc_prompt: MCPrompt | str = DEFAULT_MC_PROMPT,
) -> TruthfulQAResult:
    """The length-only reference on ``questions``: :func:`count_answer_tokens` then :func:`score_length_only`."""
    return score_length_only(questions, count_answer_tokens(model, questions, mc_prompt=mc_prompt), c=c)


def choose_length_c(
    questions: Sequence[MCQuestion], counts: Sequence[dict[str, int]], *, grid: Sequence[float] = LENGTH_C_GRID
) -> float:
    """The c of ``grid`` with the highest mean MC2 on ``questions`` (ties: the smallest c).

    Use questions the reference is not reported on (e.g. a fold's val questions); the chosen c
    then scores the test questions, so the reference is as tuned as a steering is, and no more."""
    grid = sorted(float(c) for c in grid)
    if not grid:
        raise ValueError("choose_length_c needs at least one c in grid; got none")
    means = [score_length_only(questions, counts, c=c).mc2_mean for c in grid]
    return grid[int(np.argmax(means))]  # argmax takes the first maximum: the smallest c among ties


def _check_questions(questions) -> list[MCQuestion]:
    if isinstance(questions, dict):
        raise TypeError("questions must be a sequence of MCQuestion, found a mapping; pass list(mapping.values())")
    questions = list(questions)
    if not questions:
        raise ValueError("the length-only reference needs at least one question; found none")
    bad = next((q for q in questions if not isinstance(q, MCQuestion)), None)
    if bad is not None:
        raise TypeError(f"questions must be MCQuestion objects (task.eval_data['mc'] values); found {type(bad).__name__}")
    return questions
