"""Artifact directories are single commits: whole or refused, never torn, never silently wrong."""

import json
import os
import stat
import threading

import pytest
import torch

from real_lens import artifacts, io
from real_lens.artifacts import MANIFEST, artifact_writer
from real_lens.bank import ActivationBank
from real_lens.errors import ArtifactError, BankError, OutputLockedError, RealLensError, ScoringError
from real_lens.io import read_sealed_json, read_sealed_tensors, write_sealed_json, write_sealed_tensors
from real_lens.locks import output_lock
from real_lens.scoring import ModuleScores
from real_lens.steering import Steering

from .conftest import synthetic_bank


def _scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return ModuleScores(torch.rand(2, 4, generator=g), "random", {"seed": seed}, {"auc": torch.rand(2, 4, generator=g)},
                        {"bank_digest": f"d{seed}"})


def _steering(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Steering("head_z", ((0, 1), (1, 2)), torch.randn(2, 16, generator=g), torch.rand(2, generator=g),
                    torch.ones(2), 5.0, "iti", {"task": "t"})


KINDS = {
    # kind: (make(seed), load(dir), equal(a, b), error type, the files it writes)
    "bank": (synthetic_bank, ActivationBank.load, lambda a, b: a.digest == b.digest, BankError,
             ("acts.safetensors", "bank.json", MANIFEST)),
    "scores": (_scores, ModuleScores.load, lambda a, b: torch.equal(a.scores, b.scores) and a.meta == b.meta,
               ScoringError, ("scores.safetensors", "scores.json", MANIFEST)),
    "steering": (_steering, Steering.load, lambda a, b: torch.equal(a.directions, b.directions),
                 RealLensError, ("steering.safetensors", "steering.json", MANIFEST)),
}


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_writes_a_manifest_and_loads_equal(tmp_path, kind):
    make, load, equal, _, files = KINDS[kind]
    make(0).save(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(files)
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert manifest["kind"] == kind and set(manifest["files"]) == set(files) - {MANIFEST}
    assert equal(load(tmp_path / "a"), make(0))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("damage", ["truncate", "flip-last-byte", "flip-middle", "delete", "manifest"])
def test_every_file_damaged_any_way_is_refused_in_one_line(tmp_path, kind, damage):
    make, load, _, error, files = KINDS[kind]
    for name in files:
        folder = tmp_path / name
        make(0).save(folder)
        path = folder / (MANIFEST if damage == "manifest" else name)
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif damage == "flip-last-byte":  # the data region of a safetensors file: invisible to its parser
            _flip(path, -1)
        elif damage == "flip-middle":
            _flip(path, path.stat().st_size // 2)
        elif damage == "delete":
            path.unlink()
        else:  # a manifest that no longer parses
            path.write_text("{ not json")
        if damage == "delete" and name == MANIFEST:
            # No manifest: read as an artifact of an older real-lens, with a notice, or refused where verification is required.
            with pytest.raises(error, match="cannot be verified"):
                load(folder, allow_unverified=False)
            continue
        with pytest.raises(error) as info:
            load(folder)
        assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_a_data_region_bit_flip_is_caught_only_by_the_checksum(tmp_path):
    """safetensors parses a bank whose activations were flipped; the manifest is what refuses it."""
    from safetensors.torch import load_file

    synthetic_bank(0).save(tmp_path)
    _flip(tmp_path / "acts.safetensors", -1)
    load_file(str(tmp_path / "acts.safetensors"))  # still parses
    with pytest.raises(BankError, match="SHA-256"):
        ActivationBank.load(tmp_path)


def test_older_artifacts_without_manifest_load_only_when_allowed_with_a_notice(tmp_path, capsys):
    synthetic_bank(0).save(tmp_path / "b")
    (tmp_path / "b" / MANIFEST).unlink()
    with pytest.raises(BankError, match="cannot be verified; pass --allow-unverified"):
        ActivationBank.load(tmp_path / "b")
    assert ActivationBank.load(tmp_path / "b", allow_unverified=True).digest == synthetic_bank(0).digest
    assert "without verification" in capsys.readouterr().err


@pytest.mark.parametrize("kind", KINDS)
def test_replacing_an_artifact_leaves_the_new_one_whole_and_no_leftovers(tmp_path, kind):
    make, load, equal, _, files = KINDS[kind]
    make(0).save(tmp_path / "x")
    make(1).save(tmp_path / "x")
    assert equal(load(tmp_path / "x"), make(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no staging or old copies, no lock file


def test_a_failed_write_leaves_the_old_artifact(tmp_path, monkeypatch):
    synthetic_bank(0).save(tmp_path / "b")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "save_file", full_disk)
    with pytest.raises(OSError) as info:
        synthetic_bank(1).save(tmp_path / "b")
    assert info.value.errno == 28 and str(tmp_path / "b" / "acts.safetensors") == info.value.filename
    assert ActivationBank.load(tmp_path / "b").digest == synthetic_bank(0).digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_without_rename_exchange_the_fallback_is_whole_too(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    synthetic_bank(0).save(tmp_path / "b")
    synthetic_bank(1).save(tmp_path / "b")
    assert ActivationBank.load(tmp_path / "b").digest == synthetic_bank(1).digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_a_fallback_publish_that_died_between_its_renames_reads_the_old_one_and_is_repaired(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    synthetic_bank(0).save(tmp_path / "b")
    real_rename, calls = os.rename, []

    def dies_on_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies: no cleanup of its own beyond `finally`
        real_rename(src, dst)

    monkeypatch.setattr(artifacts.os, "rename", dies_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        synthetic_bank(1).save(tmp_path / "b")
    monkeypatch.setattr(artifacts.os, "rename", real_rename)
    assert not (tmp_path / "b").exists()  # the window the fallback cannot close
    assert ActivationBank.load(tmp_path / "b").digest == synthetic_bank(0).digest  # readers find the old one aside
    synthetic_bank(2).save(tmp_path / "b")  # the next writer puts the old one back first, then replaces it
    assert "restored" in capsys.readouterr().err
    assert ActivationBank.load(tmp_path / "b").digest == synthetic_bank(2).digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_concurrent_writers_and_readers_only_ever_see_whole_versions(tmp_path):
    """Two writer threads replace the bank over and over while a reader loads it: every load is one
    of the two banks exactly, and nothing fails."""
    target, banks = tmp_path / "b", {0: synthetic_bank(0), 1: synthetic_bank(1)}
    digests = {b.digest for b in banks.values()}
    banks[0].save(target)
    errors, seen, stop = [], [], threading.Event()

    def write(bank):
        try:
            for _ in range(15):
                bank.save(target)
        except Exception as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    def read():
        try:
            while not stop.is_set():
                seen.append(ActivationBank.load(target).digest)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(banks[i],)) for i in (0, 1)]
    reader = threading.Thread(target=read)
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert not errors, errors
    assert seen and set(seen) <= digests
    assert ActivationBank.load(target).digest in digests


def test_a_directory_of_other_files_is_never_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not part of an activation bank.*notes.txt"):
        synthetic_bank(0).save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    _scores().save(tmp_path / "scores")
    with pytest.raises(ArtifactError, match="holds module scores, not an activation bank"):
        synthetic_bank(0).save(tmp_path / "scores")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="is a file"):
        synthetic_bank(0).save(tmp_path / "file")


def test_artifacts_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        synthetic_bank(0).save(tmp_path / "b")
        io.write_json(tmp_path / "single.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "b" / "acts.safetensors").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "single.json").stat().st_mode) == 0o640


def test_sealed_json_detects_a_flipped_digit_and_truncation(tmp_path):
    path = tmp_path / "cell.json"
    write_sealed_json(path, {"mc2": 0.416, "per_item": [0.5, float("nan")]})
    assert read_sealed_json(path)["mc2"] == 0.416
    path.write_text(path.read_text().replace("0.416", "0.414"))  # still valid JSON
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        read_sealed_json(path)
    write_sealed_json(path, {"mc2": 0.416})
    path.write_text(path.read_text()[:10])
    with pytest.raises(ArtifactError, match="unreadable"):
        read_sealed_json(path)


def test_sealed_tensors_detect_a_flipped_activation(tmp_path):
    path = tmp_path / "chunk.safetensors"
    write_sealed_tensors(path, {"acts": torch.arange(12.0)})
    assert torch.equal(read_sealed_tensors(path)["acts"], torch.arange(12.0))
    _flip(path, -1)
    with pytest.raises(ArtifactError, match="do not match their checksum"):
        read_sealed_tensors(path)


def test_a_second_writer_fails_at_once_or_waits(tmp_path):
    held, release, outcome = threading.Event(), threading.Event(), []

    def holder():
        with output_lock(tmp_path / "out", wait=False):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    with pytest.raises(OutputLockedError, match=r"being written by another real-lens process \(pid \d+"):
        with output_lock(tmp_path / "out", wait=False):
            pass

    def waiter():
        with output_lock(tmp_path / "out", wait=True):
            outcome.append("got it")

    second = threading.Thread(target=waiter)
    second.start()
    second.join(0.3)
    assert outcome == []  # still waiting
    release.set()
    thread.join()
    second.join(10)
    assert outcome == ["got it"]
    with output_lock(tmp_path / "out", wait=False):  # re-entrant within a thread
        with output_lock(tmp_path / "out", wait=False):
            pass


def test_a_symlinked_output_is_published_where_it_points(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    synthetic_bank(0).save(tmp_path / "link")
    synthetic_bank(1).save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert ActivationBank.load(tmp_path / "real").digest == synthetic_bank(1).digest


def test_artifact_writer_publishes_nothing_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with artifact_writer(tmp_path / "a", kind="bank") as staging:
            (staging / "acts.safetensors").write_bytes(b"half")
            raise RuntimeError("killed")
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []


def test_locks_exclude_each_other_while_their_files_come_and_go(tmp_path):
    """Each release removes the lock file; waiters that locked the removed file must lock the new one,
    so no two holders ever overlap."""
    inside, overlaps, done = [], [], []

    def worker():
        for _ in range(25):
            with output_lock(tmp_path / "out", wait=True):
                if inside:
                    overlaps.append(1)
                inside.append(1)
                threading.Event().wait(0.001)
                inside.pop()
        done.append(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(done) == 4 and not overlaps
    assert list(tmp_path.iterdir()) == []  # the last holder removed the lock file
