"""Every bad option and every expected failure: one line on stderr, exit code 2, no traceback,
checked before any model is loaded; a bug is a traceback plus a line asking to report it."""

import errno
import json
import pickle

import pytest
import torch

from real_lens.cli import commands as cli_commands
from real_lens import cli as cli_module
from real_lens import models
from real_lens.experiment import config_for, start_run_dir

from .conftest import assert_one_line, cli, write_task


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model):
    """A task file, a bank and scores made by the CLI itself."""
    root = tmp_path_factory.mktemp("made")
    task = write_task(root / "beh.csv")
    assert cli_module.main(["collect", "--model", "tiny-llama", "--task", f"file:{task}", "--out", str(root / "bank")]) == 0
    assert cli_module.main(["score", "--bank", str(root / "bank"), "--method", "random", "--out", str(root / "scores")]) == 0
    (root / "a_file").write_text("x")
    return root


@pytest.fixture
def no_model_loads(monkeypatch):
    """These mistakes must be refused before any model is loaded."""
    monkeypatch.setattr(models.loading, "load_hf", lambda *a, **k: pytest.fail("a model was loaded before the options were checked"))


NO_CUDA_DEVICE = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"

# (argv with {root}/{task}/{bank}/{scores}/{file} placeholders, text the one line must contain)
OPTION_MISTAKES = [
    (["steer", "--scores", "{scores}", "--prompt", "x", "--alpha", "nan"], "finite"),
    (["steer", "--scores", "{scores}", "--prompt", "x", "--alpha", "inf"], "finite"),
    (["steer", "--scores", "{scores}", "--prompt", "x", "--alpha=-inf"], "finite"),
    (["steer", "--scores", "{scores}", "--prompt", "x", "--max-new-tokens", "1e20"], "positive integer"),
    (["generate", "--prompt", "x", "--max-new-tokens", "100000000000000000000"], "at most"),
    (["generate", "--prompt", "x", "--max-new-tokens", "0"], "positive integer"),
    (["score", "--bank", "{bank}", "--method", "random", "--seed", "-1", "--out", "{root}/s"], "seed from 0"),
    (["score", "--bank", "{bank}", "--method", "random", "--seed", "1e23", "--out", "{root}/s"], "seed from 0"),
    (["score", "--bank", "{bank}", "--method", "random", "--seed", str(2**40), "--out", "{root}/s"], "seed from 0"),
    (["run", "--seed", "-1", "--out", "{root}/r"], "seed from 0"),
    (["run", "--alpha-grid", "5,nan", "--out", "{root}/r"], "finite"),
    (["run", "--k-grid", "0", "--out", "{root}/r"], "positive"),
    (["run", "--kl-grid", "0.1,-1", "--out", "{root}/r"], "KL targets > 0"),
    (["run", "--null-draws", "0", "--out", "{root}/r"], "null_draws must be an integer >= 1"),
    (["collect", "--task", "file:{task}", "--device", NO_CUDA_DEVICE, "--out", "{root}/b"], "cuda"),
    (["generate", "--prompt", "x", "--device", "gpu7"], "not a torch device"),
    (["generate", "--prompt", "x", "--device", "meta"], "no meta device"),
    (["run", "--device", NO_CUDA_DEVICE, "--out", "{root}/r"], "cuda"),
    (["collect", "--task", "file:{task}", "--out", ""], "--out is empty"),
    (["score", "--bank", "{bank}", "--method", "random", "--out", ""], "--out is empty"),
    (["run", "--task", "file:{task}", "--out", ""], "--out is empty"),
    (["collect", "--task", "file:{task}", "--out", "{file}"], "is a file"),
    (["collect", "--task", "file:{task}", "--out", "{file}/sub/bank"], "which is a file"),
    (["score", "--bank", "{bank}", "--method", "random", "--out", "{bank}"], "holds an activation bank, not module scores"),
    (["collect", "--task", "file:{task}", "--out", "{scores}"], "holds module scores, not an activation bank"),
    (["collect", "--task", "file:{task}", "--limit", "1", "--out", "{root}/b"], "--limit 2 or more"),
    (["collect", "--task", "file:{root}/missing.csv", "--out", "{root}/b"], "does not exist"),
    (["collect", "--task", "file:{root}", "--out", "{root}/b"], "is a directory"),
    (["tasks", "--data-dir", "{root}/missing"], "is not a directory"),
    (["steer", "--scores", "{bank}", "--prompt", "x"], "holds no module scores (it holds an activation bank)"),
    (["score", "--bank", "{scores}", "--method", "random", "--out", "{root}/s"], "holds no activation bank"),
]


@pytest.mark.parametrize("argv, expected", OPTION_MISTAKES, ids=[" ".join(a)[:60] for a, _ in OPTION_MISTAKES])
def test_option_mistakes_are_one_line_before_any_model_loads(capsys, made, no_model_loads, argv, expected):
    values = {"root": made, "task": made / "beh.csv", "bank": made / "bank", "scores": made / "scores",
              "file": made / "a_file"}
    code, _, err = cli(capsys, *[a.format(**values) for a in argv])
    assert_one_line(code, err, contains=expected)


def test_a_rejected_run_leaves_no_config_behind(capsys, made, no_model_loads):
    """`run --folds 7` used to write config.json first, so the corrected command was then refused."""
    out = made / "run"
    for bad in (["--folds", "7"], ["--select-metric", "mc7"]):
        code, _, err = cli(capsys, "run", "--quick", "--model", "tiny-llama", "--task", f"file:{made / 'beh.csv'}",
                           *bad, "--out", out)
        assert_one_line(code, err)
        assert not (out / "config.json").exists()
    good = config_for("quick", model="tiny-llama", task=f"file:{made / 'beh.csv'}", folds=(0,))
    assert start_run_dir(out, good) == out and (out / "config.json").is_file()


def test_a_run_into_a_folder_of_other_files_is_refused(capsys, made, no_model_loads, tmp_path):
    (tmp_path / "thesis.tex").write_text("keep")
    code, _, err = cli(capsys, "run", "--quick", "--task", f"file:{made / 'beh.csv'}", "--out", tmp_path)
    assert_one_line(code, err, contains="not a run directory")
    assert (tmp_path / "thesis.tex").read_text() == "keep"


def test_collect_into_a_folder_of_other_files_is_refused(capsys, made, no_model_loads, tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    code, _, err = cli(capsys, "collect", "--task", f"file:{made / 'beh.csv'}", "--out", tmp_path)
    assert_one_line(code, err, contains="notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_limit_gives_at_most_n_examples(capsys, made, tmp_path):
    code, out, _ = cli(capsys, "collect", "--model", "tiny-llama", "--task", f"file:{made / 'beh.csv'}", "--limit", "5",
                       "--out", tmp_path / "b")
    assert code == 0 and "wrote" in out
    from real_lens.bank import ActivationBank

    assert len(ActivationBank.load(tmp_path / "b").examples) == 4  # two whole questions; a third would be 6


@pytest.mark.parametrize("argv, expected", [
    (["generate", "--no-chat", "--prompt", "y" * 5000], "exceeds the model's context of 4096"),
    (["generate", "--no-chat", "--prompt", "y", "--max-new-tokens", "5000"], "lower --max-new-tokens to"),
    (["hooks", "--prompt", "y" * 5000], "exceeds the model's context"),
    (["steer", "--scores", "{scores}", "--top-k", "2", "--prompt", "y", "--max-new-tokens", "5000"], "exceeds the model's context"),
])
def test_generate_and_steer_check_the_context_like_collect(capsys, made, argv, expected):
    code, _, err = cli(capsys, *[a.format(scores=made / "scores") for a in argv], "--model", "tiny-llama")
    assert_one_line(code, err, contains=expected)


# --------------------------------------------------------------------------- file: tasks
def _rows(n_groups=6):
    return [{"prompt": f"Q{i}?", "aligned": "yes", "violating": "no", "group": f"g{i}"} for i in range(n_groups)]


def _jsonl(rows):
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


BAD_TASK_FILES = [
    ("latin1.csv", "prompt,aligned,violating\nQ caf\xe9?,yes,no\n".encode("latin-1"), "line 2: byte 0xe9 is not UTF-8"),
    ("binary.csv", b"prompt,aligned,violating\n\x00\x01\x02\x03", "binary file"),
    ("utf16.csv", "prompt,aligned,violating\nQ?,yes,no\n".encode("utf-16"), "UTF-16"),
    ("long.csv", ("prompt,aligned,violating\n" + "Q" * 200_000 + ",yes,no\n").encode(), "longer than 131,072"),
    ("long.jsonl", _jsonl([{**_rows()[0], "prompt": "Q" * 200_000}] + _rows()[1:]), "200,000 characters"),
    ("list.jsonl", _jsonl([{**_rows()[0], "prompt": ["Q", 0]}] + _rows()[1:]), "column 'prompt' is a list"),
    ("number.jsonl", _jsonl(_rows()[:1] + [{**_rows()[1], "aligned": 3.5}] + _rows()[2:]), "line 2: column 'aligned' is a number"),
    ("group.jsonl", _jsonl([{**_rows()[0], "group": {"id": 1}}] + _rows()[1:]), "column 'group' is an object"),
    ("one_group.csv", b"prompt,aligned,violating,group\nQ1?,yes,no,g\nQ2?,yes,no,g\n", "found 1 group(s)"),
    ("three.jsonl", _jsonl(_rows(3)), "found 3 group(s)"),
    ("truncated.jsonl", _jsonl(_rows())[:-20], "not valid JSON"),
]


@pytest.mark.parametrize("name, content, expected", BAD_TASK_FILES, ids=[n for n, _, _ in BAD_TASK_FILES])
def test_bad_task_files_are_one_line(capsys, no_model_loads, tmp_path, name, content, expected):
    (tmp_path / name).write_bytes(content)
    code, _, err = cli(capsys, "collect", "--task", f"file:{tmp_path / name}", "--out", tmp_path / "bank")
    assert_one_line(code, err, contains=expected)
    assert not (tmp_path / "bank").exists()


def test_numbers_and_booleans_are_taken_where_they_make_sense(tmp_path):
    from real_lens.tasks import load_task

    rows = [{"prompt": f"Q{i}?", "answer": a, "label": label, "group": i} for i in range(4)
            for a, label in (("yes", True), ("no", 0))]
    (tmp_path / "t.jsonl").write_bytes(_jsonl(rows))
    task = load_task(f"file:{tmp_path / 't.jsonl'}")
    assert task.groups == ["0", "1", "2", "3"] and [e.label for e in task.examples[:2]] == [1, 0]


@pytest.mark.parametrize("content, expected", [
    (b'[{"question": "Q", "mc1_targets": {"a": 1', "malformed or truncated"),
    (b'[{"question": "caf\xe9"}]', "is not UTF-8"),
])
def test_a_damaged_data_file_is_one_line(capsys, no_model_loads, tmp_path, content, expected):
    (tmp_path / "truthfulqa" / "v0").mkdir(parents=True)
    (tmp_path / "truthfulqa" / "v0" / "mc_task.json").write_bytes(content)
    code, _, err = cli(capsys, "collect", "--task", "truthfulqa", "--data-dir", tmp_path, "--out", tmp_path / "b")
    assert_one_line(code, err, contains=expected)
    assert "TruthfulQA multiple-choice file" in err and "restore it" in err


def test_a_pickle_only_checkpoint_is_refused_in_one_line(capsys, tmp_path):
    hf_model, tokenizer = models.build_tiny_hf_model()
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()

    class RunsCode:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"w": RunsCode()}))
    code, out, err = cli(capsys, "generate", "--model", tmp_path, "--prompt", "x")
    assert_one_line(code, err, contains="pickle checkpoint")
    assert "this must never run" not in out


# --------------------------------------------------------------------------- the boundary itself
@pytest.mark.parametrize("exc, expected", [
    (OSError(errno.ENOSPC, "No space left on device"), "free some disk space"),
    (OSError(errno.EISDIR, "Is a directory", "/x/acts.safetensors"), "/x/acts.safetensors"),
    (OSError(errno.EROFS, "Read-only file system", "/x"), "read-only"),
    (b"\xff".decode if False else UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "expected UTF-8"),
    (json.JSONDecodeError("Expecting value", "{", 1), "malformed JSON"),
    (pickle.UnpicklingError("Weights only load failed"), "refused to load a pickle"),
    (MemoryError(), "ran out of memory"),
])
def test_expected_failures_from_anywhere_are_one_line(capsys, monkeypatch, exc, expected):
    def fail(args):
        raise exc

    monkeypatch.setattr(cli_commands, "cmd_tasks", fail)
    code, _, err = cli(capsys, "tasks")
    assert_one_line(code, err, contains=expected)


def test_a_bug_keeps_its_traceback_and_asks_for_a_report(capsys, monkeypatch):
    def bug(args):
        return 1 / 0

    monkeypatch.setattr(cli_commands, "cmd_tasks", bug)
    code, _, err = cli(capsys, "tasks")
    assert code == 1
    assert "Traceback" in err and "ZeroDivisionError" in err and "please report it" in err.splitlines()[-1]
