"""Tasks in general: limits keep whole questions."""


from real_lens.tasks.truthfulqa import load_truthfulqa
from tests.helpers import needs_data


@needs_data
def test_limit_keeps_whole_questions():
    task = load_truthfulqa().limit(20)
    counts = {g: sum(e.group == g for e in task.examples) for g in task.groups}
    full = load_truthfulqa()
    assert all(counts[g] == sum(e.group == g for e in full.examples) for g in counts)
    assert len(task.examples) <= 20
    assert all(f.test | f.train | f.val == set(task.groups) for f in task.folds)
