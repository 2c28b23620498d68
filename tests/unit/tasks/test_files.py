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
        ("prompt,answer\nx,y\n", r"missing column\(s\) 'label', 'group' \(found \['answer', 'prompt'\]\)"),
        ("prompt,aligned,group\nx,y,g\n", r"missing column\(s\) 'violating'"),
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


# --------------------------------------------------------------------------- strict parsing
HEADER = "prompt,aligned,violating,group\n"
GOOD = ['"Q: a? A:",yes,no,q1\n', "Q: b? A:,yes,no,q2\n", "Q: c? A:,yes,no,q3\n", "Q: d? A:,yes,no,q4\n"]


@pytest.mark.parametrize(
    "content, message",
    [
        # an unquoted comma shifts the columns: refused on its physical line, not loaded as "Q: Is 1"
        (HEADER + "".join(GOOD) + "Q: Is 1,000 more than 999? A:,Yes,No,q9\n", r"line 6: found 5 fields, expected 4"),
        (HEADER + "Q: x? A:,yes,no\n" + "".join(GOOD), r"line 2: found 3 fields, expected 4"),
        # a quoted field spanning two lines: the bad row after it is on physical line 6 (record 5)
        (HEADER + '"Q: two\nlines? A:",yes,no,q0\n' + "".join(GOOD[:2]) + "Q: x? A:,yes\n", r"line 6: found 2 fields"),
        (HEADER + "".join(GOOD) + '"Q: open? A:,yes,no,q5\n', r"line 6: a quoted field opened on this line is never closed"),
        (HEADER + "".join(GOOD) + '"Q: a"b,yes,no,q5\n', r"line 6: not valid CSV"),
        ("prompt,aligned,violating,violating,group\n" + "".join(GOOD), r"line 1: .*'violating' more than once"),
        ("prompt,aligned,,violating\n" + "".join(GOOD), r"line 1: the header has an empty column name"),
        (HEADER + "".join(GOOD[:2]) + "Q: e? A:,yes,no,q\x005\n", r"line 4: holds a NUL byte"),
        (HEADER + "".join(GOOD) + "Q: e? A:,  ,no,q5\n", r"line 6: column 'aligned' is empty"),
    ],
)
def test_malformed_csv_is_refused_on_its_physical_line(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content.encode())
    with pytest.raises(DataError, match=message) as info:
        load_task(f"file:{path}")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "Q\\ud800 A:", "aligned": "a", "violating": "b"}', r"line 5: column 'prompt' holds a lone surrogate"),
        ('{"prompt": "Q: e? A:", "aligned": "a"}', r"line 5: missing key 'violating'"),
        ('{"prompt": "Q: e? A:", "aligned": ["a"], "violating": "b"}', r"line 5: column 'aligned' is a list"),
        ('{"prompt": "Q: e? A:", "aligned": 3, "violating": "b"}', r"line 5: column 'aligned' is a number"),
        ('{"prompt": "Q: e? A:", "aligned": "a", "aligned": "c", "violating": "b"}', r"line 5: key\(s\) 'aligned' appear"),
        ('["Q: e? A:", "a", "b"]', r"line 5: expected a JSON object per line, found list"),
    ],
)
def test_malformed_jsonl_is_refused(tmp_path, line, message):
    good = [json.dumps({"prompt": f"Q{g}: ? A:", "aligned": "a", "violating": "b"}) for g in range(4)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([*good, line]) + "\n")
    with pytest.raises(DataError, match=message):
        load_task(f"file:{path}")


def test_a_relative_path_not_found_names_the_directory_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"does not exist \\(looked in {tmp_path}"):
        load_task("file:nowhere/beh.csv")


# --------------------------------------------------------------------------- property: round trip or refusal
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from real_lens.tasks.files import read_rows  # noqa: E402

_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20).filter(
    lambda t: t.strip() != "")
_TABLES = st.lists(st.tuples(_TEXT, _TEXT, _TEXT), min_size=4, max_size=8)


def _write_csv(path, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "aligned", "violating", "group"])
        writer.writerows([(p, a, v, f"q{i}") for i, (p, a, v) in enumerate(rows)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_TABLES)
def test_well_formed_tables_round_trip_exactly(tmp_path, rows):
    path = tmp_path / "t.csv"
    _write_csv(path, rows)
    read = [row for _, row in read_rows(path)]
    assert read == [{"prompt": p, "aligned": a, "violating": v, "group": f"q{i}"} for i, (p, a, v) in enumerate(rows)]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in read) + "\n", encoding="utf-8")
    assert [row for _, row in read_rows(jsonl)] == read


_CORRUPTIONS = {
    "extra field": lambda lines, i: lines[:i] + [lines[i].rstrip("\n") + ",extra\n"] + lines[i + 1:],
    "missing field": lambda lines, i: lines[:i] + [lines[i].rstrip("\n").rsplit(",", 1)[0] + "\n"] + lines[i + 1:],
    "unclosed quote": lambda lines, i: lines[:i] + ['"' + lines[i]] + lines[i + 1:] if i == len(lines) - 1 else None,
    "duplicate header": lambda lines, i: ["prompt,aligned,violating,aligned\n"] + lines[1:],
    "NUL byte": lambda lines, i: lines[:i] + [lines[i][:1] + "\x00" + lines[i][1:]] + lines[i + 1:],
    "empty field": lambda lines, i: lines[:i] + ['"",' + lines[i].split(",", 1)[1]] + lines[i + 1:],
}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(*[st.from_regex(r"[A-Za-z?: ]*[A-Za-z]", fullmatch=True)] * 3), min_size=4, max_size=8),
       corruption=st.sampled_from(sorted(_CORRUPTIONS)), where=st.integers(min_value=1))
def test_corrupted_tables_are_refused_never_loaded(tmp_path, rows, corruption, where):
    path = tmp_path / "t.csv"
    _write_csv(path, rows)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    i = 1 + where % (len(lines) - 1)
    if corruption == "unclosed quote":
        i = len(lines) - 1
    corrupted = _CORRUPTIONS[corruption](lines, i)
    path.write_text("".join(corrupted), encoding="utf-8", newline="")
    with pytest.raises(DataError, match=rf"{path}, line \d+: "):
        load_task(f"file:{path}")
