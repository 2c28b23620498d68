"""The hostile trial of issue 25: each case a user (or someone who can write beside their files) can
set up, reproduced first, then refused with one line, never a traceback or a clobbered file."""

import os

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
