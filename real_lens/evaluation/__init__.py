"""Evaluation of a (steered) model: TruthfulQA MC1/MC2 and side effects (CE, KL) on WikiText-2.

Every function takes ``steering=None`` or a ``Steering``; steered and unsteered evaluation run
the same code, with every forward pass inside ``steering.applied(model)`` when one is given.
"""

from .side_effects import SideEffects, evaluate_side_effects, load_wikitext_sample
from .stats import bootstrap_ci
from .truthfulqa import (
    TruthfulQAResult,
    answer_logprobs,
    evaluate_truthfulqa,
    score_mc1,
    score_mc2,
    score_question,
    select_mc_questions,
)

__all__ = [
    "SideEffects", "TruthfulQAResult", "answer_logprobs", "bootstrap_ci", "evaluate_side_effects",
    "evaluate_truthfulqa", "load_wikitext_sample", "score_mc1", "score_mc2", "score_question",
    "select_mc_questions",
]
