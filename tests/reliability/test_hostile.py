"""The hostile trial of issue 25: each case a user (or someone who can write beside their files) can
set up, reproduced first, then refused with one line, never a traceback or a clobbered file."""

import os
import threading

import pytest

from real_lens.artifacts import check_output_path
from real_lens.bank import ActivationBank
from real_lens.errors import RealLensError
from real_lens.locks import output_lock

from .conftest import assert_one_line, cli, synthetic_bank, write_task


# --------------------------------------------------------------------------- 1. symlinks are not written through
def test_a_lock_file_symlinked_to_a_victim_is_refused_and_the_victim_kept(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / ".bank.lock").symlink_to(victim)
    task = write_task(tmp_path / "beh.csv")
    code, _, err = cli(capsys, "collect", "--model", "tiny-llama", "--task", f"file:{task}", "--out", tmp_path / "bank")
    assert_one_line(code, err, contains="is a symbolic link")
    assert victim.read_text() == "precious\n" and not (tmp_path / "bank").exists()


def test_the_library_lock_refuses_a_symlinked_lock_file(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / ".out.lock").symlink_to(victim)
    with pytest.raises(RealLensError, match="symbolic link"):
        with output_lock(tmp_path / "out", wait=True):
            pass
    with pytest.raises(RealLensError, match="symbolic link"):
        synthetic_bank(0).save(tmp_path / "out")
    assert victim.read_text() == "precious\n"


def test_a_symlinked_out_is_refused(tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RealLensError, match="--out .* is a symbolic link"):
        check_output_path(tmp_path / "link", kind="bank")
    task = write_task(tmp_path / "beh.csv")
    code, _, err = cli(capsys, "collect", "--model", "tiny-llama", "--task", f"file:{task}", "--out", tmp_path / "link")
    assert_one_line(code, err, contains="symbolic link")
    assert list((tmp_path / "elsewhere").iterdir()) == []


# --------------------------------------------------------------------------- 2. only our own staging is removed
def test_a_folder_named_like_staging_is_not_deleted(tmp_path):
    mine = tmp_path / ".bank.staging-mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    aside = tmp_path / ".bank.old-deadbeef"  # an "old copy" name, but no artifact inside
    aside.mkdir()
    (aside / "notes.txt").write_text("mine too\n")
    synthetic_bank(0).save(tmp_path / "bank")
    synthetic_bank(1).save(tmp_path / "bank")
    assert (mine / "notes.txt").read_text() == "mine\n" and (aside / "notes.txt").read_text() == "mine too\n"
    assert ActivationBank.load(tmp_path / "bank").digest == synthetic_bank(1).digest
    assert sorted(os.listdir(tmp_path)) == [".bank.old-deadbeef", ".bank.staging-mine", "bank"]


def test_a_published_artifact_holds_no_staging_marker(tmp_path):
    synthetic_bank(0).save(tmp_path / "bank")
    assert sorted(os.listdir(tmp_path / "bank")) == ["acts.safetensors", "bank.json", "manifest.json"]


# --------------------------------------------------------------------------- 3. no silent column shift
@pytest.mark.parametrize("content, message", [
    ("prompt,aligned,violating,group\n" + "".join(f"Q: {i}? A:,Yes,No,q{i}\n" for i in range(5))
     + "Q: Is 1,000 more than 999? A:,Yes,No,q9\n", "line 7: found 5 fields, expected 4"),
    ("prompt,aligned,violating,violating,group\n" + "".join(f"Q: {i}? A:,Yes,No,No,q{i}\n" for i in range(5)),
     "line 1: the header names column(s) 'violating' more than once"),
])
def test_a_column_shift_or_duplicate_header_is_refused_before_the_model(tmp_path, capsys, monkeypatch, content, message):
    from real_lens.cli import commands

    monkeypatch.setattr(commands, "load_model_for", lambda args: pytest.fail("the model was loaded"))
    (tmp_path / "beh.csv").write_text(content)
    code, _, err = cli(capsys, "collect", "--task", f"file:{tmp_path / 'beh.csv'}", "--out", tmp_path / "bank")
    assert_one_line(code, err, contains=message)


# --------------------------------------------------------------------------- 4. transfer trusts no edited table
def _finished_run(tmp_path):
    from real_lens.experiment import config_for
    from real_lens.experiment.config import jsonable
    from real_lens.experiment.store import write_rows
    from real_lens.io import write_sealed_json

    run = tmp_path / "source"
    run.mkdir()
    write_sealed_json(run / "config.json", {"config": jsonable(config_for("quick", model="tiny-llama"))})
    write_rows(run / "results.csv", [{"fold": 0, "method": "iti", "split": "test", "k": 2, "alpha": 3.5,
                                      "target_kl": 0.3, "draw": ""}])
    return run


def test_transfer_refuses_an_edited_results_table(tmp_path):
    from real_lens.experiment import load_source_run

    run = _finished_run(tmp_path)
    assert load_source_run(run)[1][0]["alpha"] == "3.5"
    table = run / "results.csv"
    table.write_text(table.read_text().replace("3.5", "99"))  # every α set to 99
    with pytest.raises(RealLensError, match="does not match its seal"):
        load_source_run(run)
    (run / "results.csv.seal").unlink()
    with pytest.raises(RealLensError, match="has no seal"):
        load_source_run(run)


# --------------------------------------------------------------------------- 5. export --out: the rules of every writer
def test_export_does_not_write_into_a_folder_of_other_files(tmp_path, capsys, monkeypatch):
    from real_lens.cli import steering as cli_steering

    monkeypatch.setattr(cli_steering, "_steering_for", lambda args: pytest.fail("loaded before --out was checked"))
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    code, _, err = cli(capsys, "export", "--scores", tmp_path / "s", "--format", "vectors", "--out", folder)
    assert_one_line(code, err, contains="not overwritten")
    assert os.listdir(folder) == ["notes.txt"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model):
    """A bank of a file: task on tiny-llama and its ITI scores (CLI-made)."""
    from real_lens.cli import main

    root = tmp_path_factory.mktemp("hostile")
    task = write_task(root / "beh.csv")
    assert main(["--quiet", "collect", "--model", "tiny-llama", "--task", f"file:{task}", "--out", str(root / "bank")]) == 0
    assert main(["--quiet", "score", "--bank", str(root / "bank"), "--method", "iti", "--out", str(root / "iti")]) == 0
    return root


def test_exported_vectors_are_an_artifact_with_a_manifest_and_a_lock(scored, tmp_path, capsys):
    from real_lens.artifacts import verify_artifact

    out = tmp_path / "vectors"
    held, release = threading.Event(), threading.Event()

    def other_writer():  # another export is writing it (locks exclude threads like processes)
        with output_lock(out, wait=False):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=other_writer)
    thread.start()
    held.wait(30)
    try:
        code, _, err = cli(capsys, "--quiet", "export", "--scores", scored / "iti", "--format", "vectors", "--out", out)
    finally:
        release.set()
        thread.join()
    assert_one_line(code, err, contains="being written by another real-lens process")
    code, _, err = cli(capsys, "--quiet", "export", "--scores", scored / "iti", "--format", "vectors", "--out", out)
    assert code == 0, err
    assert set(verify_artifact(out, kind="vectors")["files"]) == {"vectors.safetensors", "vectors.json"}


# --------------------------------------------------------------------------- 6. no manifest: refused unless asked
def test_a_bank_without_manifest_is_refused_unless_allow_unverified(scored, tmp_path, capsys):
    import shutil

    bank = tmp_path / "bank"
    shutil.copytree(scored / "bank", bank)
    (bank / "manifest.json").unlink()
    data = bytearray((bank / "acts.safetensors").read_bytes())
    data[-1] ^= 0x01  # a flipped bit the manifest would have caught
    (bank / "acts.safetensors").write_bytes(bytes(data))
    code, _, err = cli(capsys, "score", "--bank", bank, "--method", "random", "--out", tmp_path / "s")
    assert_one_line(code, err, contains="--allow-unverified")
    assert not (tmp_path / "s").exists()
    code, _, err = cli(capsys, "score", "--bank", bank, "--method", "random", "--allow-unverified", "--out", tmp_path / "s")
    assert code == 0 and "without verification" in err
    with pytest.raises(RealLensError, match="cannot be verified"):
        ActivationBank.load(bank)  # the API's default too


def test_a_local_model_directory_is_fingerprinted_by_its_weights(tmp_path):
    from real_lens.models.identity import dir_fingerprint

    model = tmp_path / "model"
    model.mkdir()
    weights = model / "model.safetensors"
    weights.write_bytes(b"A" * 4096)
    (model / "config.json").write_text("{}")
    cache = tmp_path / "hashes.json"
    before, stat = dir_fingerprint(model, cache_file=cache), weights.stat()
    assert dir_fingerprint(model, cache_file=cache) == before  # cached: same answer
    with open(weights, "r+b") as f:  # other weights, same size, same mtime to the nanosecond
        f.write(b"B")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    assert dir_fingerprint(model, cache_file=cache) != before
    assert dir_fingerprint(model) != before  # without a cache too


# --------------------------------------------------------------------------- 7. no traceback for hostile files
def test_a_lone_surrogate_in_jsonl_is_one_line(tmp_path, capsys, monkeypatch):
    from real_lens.cli import commands

    monkeypatch.setattr(commands, "load_model_for", lambda args: pytest.fail("the model was loaded"))
    rows = [f'{{"prompt": "Q{i}: ? A:", "aligned": "a", "violating": "b"}}' for i in range(5)]
    (tmp_path / "beh.jsonl").write_text("\n".join([*rows, '{"prompt": "Q\\ud800 A:", "aligned": "a", "violating": "b"}']))
    code, _, err = cli(capsys, "collect", "--task", f"file:{tmp_path / 'beh.jsonl'}", "--out", tmp_path / "bank")
    assert_one_line(code, err, contains="line 6: column 'prompt' holds a lone surrogate")


def test_a_manifest_nested_100k_deep_is_one_line(scored, tmp_path, capsys):
    import shutil

    bank = tmp_path / "bank"
    shutil.copytree(scored / "bank", bank)
    (bank / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = cli(capsys, "score", "--bank", bank, "--method", "random", "--out", tmp_path / "s")
    assert_one_line(code, err, contains="nested too deeply")


def test_export_under_a_file_size_limit_is_one_line(scored, tmp_path):
    import resource

    from .conftest import run_python

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # ulimit -f 1

    code = "import sys; from real_lens.cli import main; sys.exit(main(sys.argv[1:]))"
    done = run_python(code, "--quiet", "export", "--scores", scored / "iti", "--format", "lm-eval",
                      "--out", tmp_path / "s.pt", preexec_fn=limit)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "File too large" in done.stderr and "ulimit -f" in done.stderr, done.stderr
    assert not (tmp_path / "s.pt").exists()


# --------------------------------------------------------------------------- 8. checked before any model loads
@pytest.mark.parametrize("argv, message", [
    (["run", "--quick", "--model", "tiny-llama", "--site", "bogus"], "'bogus' is not one of head_z"),
    (["run", "--quick", "--model", "tiny-llama", "--pair-min-gap", "nan"], "pair_min_gap must be a finite number"),
    (["score", "--task", "caa:refusal", "--min-gap", "nan", "--method", "patching"], "--min-gap: expected a finite"),
    (["score", "--task", "caa:refusal", "--n-pairs", "5", "--method", "iti"], "--n-pairs apply to the contrast-pair"),
    (["score", "--bank", "B", "--task", "caa:refusal"], "--task: not allowed with argument --bank"),
    (["inspect", "--scores", "S", "--prompt", "p", "--warn-ratio", "nan"], "--warn-ratio: expected a finite number"),
    (["inspect", "--scores", "S", "--prompt", "p", "--warn-ratio", "-1"], "--warn-ratio: expected a finite number > 0"),
    (["export", "--scores", "S", "--format", "lm-eval", "--out", ""], "--out is empty"),
    (["export", "--scores", "S", "--format", "steering", "--out", "FILE"], "is a file; expected a directory"),
])
def test_bad_options_fail_before_any_model_or_file(tmp_path, capsys, monkeypatch, argv, message):
    from real_lens import models
    from real_lens.cli import commands

    for where in (commands, models):
        monkeypatch.setattr(where, "load_model", lambda *a, **k: pytest.fail("a model was loaded"), raising=False)
    monkeypatch.setattr(commands, "load_model_for", lambda args: pytest.fail("a model was loaded"))
    (tmp_path / "FILE").write_text("mine\n")
    argv = [str(tmp_path / "FILE") if a == "FILE" else a for a in argv]
    if argv[0] in ("run", "score"):
        argv += ["--out", str(tmp_path / "out")]
    code, _, err = cli(capsys, *argv)
    assert_one_line(code, err, contains=message)
    assert not (tmp_path / "out").exists()  # a refused run leaves no config.json
    assert (tmp_path / "FILE").read_text() == "mine\n"


# --------------------------------------------------------------------------- 9. --quiet means quiet
def test_quiet_silences_the_patching_bars(scored, tmp_path, capsys):
    code, _, err = cli(capsys, "score", "--quiet", "--bank", scored / "bank", "--method", "patching", "--n-pairs", "1",
                       "--n-demos", "1", "--min-gap", "0", "--out", tmp_path / "p")
    assert code == 0 and err == "", err


def test_quiet_silences_the_gguf_dequantisation_bar(capsys, monkeypatch):
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from real_lens.cli import commands

    def dequantise(args):  # what transformers' GGUF loader does while it dequantises
        for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass

    monkeypatch.setattr(commands, "cmd_hooks", dequantise)
    original = gguf_utils.tqdm
    code, _, err = cli(capsys, "hooks", "--quiet")
    assert code == 0 and err == "", err
    assert gguf_utils.tqdm is original  # put back after the command
    code, _, err = cli(capsys, "hooks")
    assert code == 0 and "de-quantizing" in err


def test_a_lock_file_hard_linked_to_a_victim_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.link(victim, tmp_path / ".out.lock")
    with pytest.raises(RealLensError, match="hard link"):
        synthetic_bank(0).save(tmp_path / "out")
    assert victim.read_text() == "precious\n"


def test_an_lm_eval_export_onto_a_symlink_is_refused(tmp_path, capsys, monkeypatch):
    from real_lens.cli import steering as cli_steering

    monkeypatch.setattr(cli_steering, "_steering_for", lambda args: pytest.fail("loaded before --out was checked"))
    victim = tmp_path / "victim.pt"
    victim.write_text("precious\n")
    (tmp_path / "s.pt").symlink_to(victim)
    code, _, err = cli(capsys, "export", "--scores", tmp_path / "s", "--format", "lm-eval", "--out", tmp_path / "s.pt")
    assert_one_line(code, err, contains="is a symbolic link")
    assert victim.read_text() == "precious\n"
