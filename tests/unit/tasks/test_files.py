"""`file:` tasks: CSV and JSONL in both layouts, and malformed files named with their row and fix."""
import json

import pytest

from real_lens.errors import DataError
from real_lens.tasks import load_task


def test_file_task_paired_csv(tmp_path):
    path = tmp_path / "beh.csv"
    path.write_text("prompt,aligned,violating,group\nQ: sky? A:,Blue,Green,q1\nQ: grass? A:, Green,Blue,q2\n"
                    "Q: snow? A:,White,Black,q3\nQ: coal? A:,Black,White,q4\n")  # 4 groups: the fewest 2 folds allow
    task = load_task(f"file:{path}")
    assert [(e.text, e.label, e.group) for e in task.examples][:4] == [
        ("Q: sky? A: Blue", 1, "q1"), ("Q: sky? A: Green", 0, "q1"),
        ("Q: grass? A: Green", 1, "q2"), ("Q: grass? A: Blue", 0, "q2"),
    ]
    for fold in task.folds:
        assert fold.test and not fold.test & (fold.train | fold.val)


def test_file_task_labelled_jsonl(tmp_path):
    path = tmp_path / "beh.jsonl"
    rows = [
        {"prompt": "P1", "answer": "a", "label": 1, "group": "g"},
        {"prompt": "P1", "answer": "b", "label": "0", "group": "g"},
    ] + [{"prompt": f"P{g}", "answer": a, "label": label, "group": g}  # 4 groups: the fewest 2 folds allow
         for g in (2, 3, 4) for a, label in (("a", True), ("b", False))]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = load_task(f"file:{path}")
    assert [e.label for e in task.examples] == [1, 0] * 4


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "holds no rows"),
        ("prompt,answer\nx,y\n", r"found columns \['answer', 'prompt'\]; expected either"),
        ("prompt,answer,label,group\nx,y,1,g\nx,z,1,g\n", "group 'g' has only label 1"),
        ("prompt,answer,label,group\nx,y,maybe,g\n", r"line 2: label 'maybe' is not 1/0"),
        ("prompt,aligned,violating\nx,,b\n", r"line 2: column 'aligned' is empty"),
    ],
)
def test_malformed_files_name_file_row_and_fix(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_task(f"file:{path}")
    assert str(path) in str(info.value)


def test_bad_jsonl_line_is_reported(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "x", "aligned": "a", "violating": "b"}\n{oops\n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        load_task(f"file:{path}")
