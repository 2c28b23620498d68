"""summary.md says what a small run cannot support: few test questions, top K decided by ties, AUCs on few questions."""

from real_lens.experiment.report import ENOUGH_TEST_QUESTIONS, small_sample_lines


def test_small_sample_lines_say_each_limit_and_nothing_when_there_is_none():
    ties = [{"fold": 0, "method": "iti", "k": 8, "score": 1.0, "n_tied": 31, "n_inside": 8, "decided_by_ties": True,
             "broken_by": "val_auc"}]
    heldout = {"real": {"0": {"n_questions": 5, "n_examples": 10, "n_aligned": 5},
                        "1": {"n_questions": 6, "n_examples": 12, "n_aligned": 6}}}
    text = "\n".join(small_sample_lines({"ties": ties, "heldout": heldout, "min_test_questions": 4,
                                         "enough_test_questions": ENOUGH_TEST_QUESTIONS}))
    assert "## What this run's size can support" in text
    assert "4 per fold, fewer than ~20" in text
    assert "fold 0 iti: 31 modules share the score 1 and only 8 fit; the tie-break (val_auc) chose them" in text
    assert "real's AUC per module rests on its held-out examples: fold 0: 5 questions (10 examples), fold 1: 6 " \
           "questions (12 examples) — few" in text
    enough = {"0": {"n_questions": 40, "n_examples": 80, "n_aligned": 40}}
    assert small_sample_lines({"ties": [], "heldout": {}, "min_test_questions": 40}) == []
    assert "— few" not in "\n".join(small_sample_lines({"ties": [], "heldout": {"real": enough},
                                                        "min_test_questions": 40}))
    assert small_sample_lines(None) == []  # a summary.json written before these were recorded
