"""Caches heal: anything unreadable or failing verification is rebuilt, said so in one line, never a traceback."""

import csv
import dataclasses
import json

import pytest
import torch

from real_lens import activations, models
from real_lens.activations import collect_activations
from real_lens.experiment import cached_cell, cached_scores, config_for, run_experiment, start_run_dir
from real_lens.artifacts import MANIFEST
from real_lens.io import read_sealed_json
from real_lens.tasks import Example
from real_lens.tasks.data import resolve_data_dir

from .conftest import synthetic_bank, write_task


def _examples(n_groups):
    return tuple(Example(f"Q: is {g} even?{'!' * (g % 5)} A:", f" {a}", label, f"q{g}")
                 for g in range(n_groups) for a, label in (("yes", 1), ("no", 0)))


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip-activation", "truncate-json", "no-manifest", "empty-folder"])
def test_a_damaged_bank_cache_is_rebuilt_and_said_so(tmp_path, tiny_model, capsys, damage):
    examples = _examples(3)
    first = collect_activations(tiny_model, examples, cache_dir=tmp_path, progress=False)
    folder = tmp_path / first.meta["cache_key"]
    if damage == "flip-activation":
        _flip_last_byte(folder / "acts.safetensors")
    elif damage == "truncate-json":
        (folder / "bank.json").write_text((folder / "bank.json").read_text()[:50])
    elif damage == "no-manifest":
        (folder / MANIFEST).unlink()
    else:
        for p in folder.iterdir():
            p.unlink()
    capsys.readouterr()
    again = collect_activations(tiny_model, examples, cache_dir=tmp_path, progress=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rebuilding the cached activation bank" in err
    assert torch.equal(again.acts, first.acts)
    collect_activations(tiny_model, examples, cache_dir=tmp_path, progress=False)
    assert capsys.readouterr().err == ""  # healed: read from the cache now


def test_a_killed_collection_of_fewer_than_256_examples_keeps_its_finished_chunks(tmp_path, tiny_model, monkeypatch):
    examples = _examples(75)  # 150 examples: chunks of 64, 64, 22
    reference = collect_activations(tiny_model, examples, cache=False, progress=False)
    real_collect, calls = activations._collect, []

    def killed_in_the_third_chunk(model, part, *args):
        calls.append(len(part))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_collect(model, part, *args)

    monkeypatch.setattr(activations, "_collect", killed_in_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        collect_activations(tiny_model, examples, cache_dir=tmp_path, progress=False)
    calls.clear()
    monkeypatch.setattr(activations, "_collect", lambda m, part, *a: calls.append(len(part)) or real_collect(m, part, *a))
    bank = collect_activations(tiny_model, examples, cache_dir=tmp_path, progress=False)
    assert calls == [22]  # the two finished chunks came from disk
    assert torch.allclose(bank.acts, reference.acts, atol=1e-5)
    assert not (tmp_path / f"{bank.meta['cache_key']}.chunks").exists()  # chunks go once the bank is published


def test_a_damaged_chunk_is_recomputed_and_said_so(tmp_path, tiny_model, monkeypatch, capsys):
    examples = _examples(6)
    real_collect, calls = activations._collect, []

    def interrupted(model, part, *args):
        calls.append(len(part))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_collect(model, part, *args)

    monkeypatch.setattr(activations, "_collect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        collect_activations(tiny_model, examples, chunk_size=4, cache_dir=tmp_path, progress=False)
    (chunk,) = tmp_path.glob("*.chunks/chunk_00000.safetensors")
    _flip_last_byte(chunk)
    calls.clear()
    monkeypatch.setattr(activations, "_collect", lambda m, part, *a: calls.append(len(part)) or real_collect(m, part, *a))
    capsys.readouterr()
    collect_activations(tiny_model, examples, chunk_size=4, cache_dir=tmp_path, progress=False)
    assert calls == [4, 4, 4]  # the damaged chunk too
    assert "recomputing the cached chunk chunk_00000.safetensors" in capsys.readouterr().err


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A .gguf whose dequantisation writes the tiny model (the real one takes ~35 s): the cache code is the real one."""
    monkeypatch.setenv("REAL_LENS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny-llama.gguf"
    path.write_bytes(b"GGUF stand-in")
    builds = []

    def dequantise(source, staging):
        builds.append(source)
        hf_model, tokenizer = models.build_tiny_hf_model()
        hf_model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    monkeypatch.setattr(models.embedded, "dequantise_to", dequantise)
    return path, builds


@pytest.mark.parametrize("damage", ["truncate-weights", "flip-weights", "break-marker", "no-manifest", "delete-config"])
def test_a_damaged_model_cache_is_rebuilt_and_said_so(fake_gguf, tiny_model, capsys, damage):
    path, builds = fake_gguf
    models.load_model(str(path))
    (target,) = [p for p in (models.cache_root() / "models").iterdir() if not p.name.startswith(".")]
    weights = target / "model.safetensors"
    if damage == "truncate-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "flip-weights":
        _flip_last_byte(weights)
    elif damage == "break-marker":
        (target / "real_lens_cache.json").write_text('{"key": ')
    elif damage == "no-manifest":
        (target / MANIFEST).unlink()
    else:
        (target / "config.json").unlink()
    capsys.readouterr()
    model = models.load_model(str(path))
    err = capsys.readouterr().err
    assert len(builds) == 2 and err.count("\n") == 1 and "rebuilding the cached dequantised model" in err
    tokens = tiny_model.to_tokens("healed")
    assert torch.allclose(model(tokens), tiny_model(tokens), atol=1e-6)
    models.load_model(str(path))
    assert len(builds) == 2 and capsys.readouterr().err == ""


def test_a_damaged_tokenizer_cache_is_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REAL_LENS_CACHE", str(tmp_path))
    models.byte_tokenizer()
    (tmp_path / "tokenizers" / "bytes-v1" / "tokenizer.json").write_text("{")
    capsys.readouterr()
    tokenizer = models.byte_tokenizer()
    assert "rebuilding the byte tokenizer" in capsys.readouterr().err
    assert tokenizer.decode(tokenizer.encode("héllo", add_special_tokens=False)) == "héllo"


# --------------------------------------------------------------------------- run directories
def test_a_damaged_cell_is_recomputed(tmp_path, capsys):
    cfg, computed = config_for("quick"), []
    cell = cached_cell(tmp_path, cfg, 0, {"method": "iti", "split": "val", "k": 2, "alpha": 5.0})
    compute = lambda: computed.append(1) or {"mc2": 0.416, "per_item": {"mc2": [0.416]}}  # noqa: E731
    assert cell(compute)["mc2"] == 0.416 and cell(compute)["mc2"] == 0.416 and len(computed) == 1
    (path,) = (tmp_path / "cells").iterdir()
    path.write_text(path.read_text().replace("0.416", "0.914"))  # valid JSON, wrong number
    assert cell(compute)["mc2"] == 0.416 and len(computed) == 2
    assert "recomputing cached cells that fail their check" in capsys.readouterr().err
    path.write_text(path.read_text()[:20])  # truncated
    assert cell(compute)["mc2"] == 0.416 and len(computed) == 3
    assert read_sealed_json(path)["mc2"] == 0.416


def test_a_scorer_setting_recomputes_only_that_scorers_cells(tmp_path):
    """Changing attribution's pair count redoes attribution's cells and nobody else's; a setting
    every cell reads (the test sample) redoes them all."""
    cfg = config_for("quick")
    keys = [{"method": m, "split": "test", "k": 2, "dose": "KL 0.3"} for m in ("unsteered", "random", "iti", "real",
                                                                                 "patching", "attribution")]

    def recomputed(changed):
        computed = []
        for key in keys:
            cached_cell(tmp_path, changed, 0, key)(lambda key=key: computed.append(key["method"]) or {"mc2": 0.5})
        return computed

    assert len(recomputed(cfg)) == len(keys)
    assert recomputed(cfg) == []
    assert recomputed(dataclasses.replace(cfg, attribution_pairs=cfg.attribution_pairs + 1)) == ["attribution"]
    assert recomputed(dataclasses.replace(cfg, real_epochs=cfg.real_epochs + 1)) == ["real"]
    assert recomputed(dataclasses.replace(cfg, pair_demos=cfg.pair_demos + 1)) == ["patching", "attribution"]
    assert len(recomputed(dataclasses.replace(cfg, n_test_questions=cfg.n_test_questions + 1))) == len(keys)


def test_damaged_cached_scores_are_recomputed(tmp_path, tiny_model, capsys):
    bank = synthetic_bank(0, meta={"cache_key": "k0"})
    cfg = config_for("quick")
    first = cached_scores(tmp_path, cfg, 0, "random", bank, None)
    folder = tmp_path / "scores" / "fold0" / "random"
    _flip_last_byte(folder / "scores.safetensors")
    capsys.readouterr()
    again = cached_scores(tmp_path, cfg, 0, "random", bank, None)
    assert "recomputing the cached random scores of fold 0" in capsys.readouterr().err
    assert torch.equal(again.scores, first.scores)
    (folder / "key.json").write_text(json.dumps({"bank": "another"}))  # outside the manifest's knowledge: damaged
    cached_scores(tmp_path, cfg, 0, "random", bank, None)
    assert "recomputing" in capsys.readouterr().err
    cached_scores(tmp_path, cfg, 0, "random", bank, None)
    assert capsys.readouterr().err == ""


def test_a_damaged_run_config_is_rewritten_and_a_legacy_one_accepted(tmp_path, capsys):
    task = write_task(tmp_path / "beh.csv")
    cfg = config_for("quick", task=f"file:{task}")
    start_run_dir(tmp_path / "run", cfg)
    config = tmp_path / "run" / "config.json"
    config.write_text(config.read_text()[:30])
    start_run_dir(tmp_path / "run", cfg)
    assert "config.json is damaged" in capsys.readouterr().err
    stored = read_sealed_json(config)
    config.write_text(json.dumps({"config": stored["config"]}))  # as an older real-lens wrote it
    start_run_dir(tmp_path / "run", cfg)
    assert capsys.readouterr().err == "" and read_sealed_json(config)["config"] == stored["config"]


@pytest.mark.skipif(resolve_data_dir() is None, reason="../shared/data is not present (WikiText-2 for CE/KL)")
def test_a_run_heals_a_damaged_cell_scores_and_config_and_gives_the_same_results(tmp_path, tiny_model, capsys):
    task = write_task(tmp_path / "beh.csv", n_groups=8)
    cfg = config_for("quick", model="tiny-llama", task=f"file:{task}", methods=("random",), k_grid=(1,),
                     kl_grid=None, alpha_grid=(5.0,), side_effect_texts=2, n_boot=20)
    run_experiment(cfg, tmp_path / "run", progress=False)
    before = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    run = tmp_path / "run"
    cell = sorted((run / "cells").iterdir())[0]
    cell.write_text(cell.read_text()[:-40])
    _flip_last_byte(run / "scores" / "fold0" / "random" / "scores.safetensors")
    (run / "config.json").write_text("{")
    capsys.readouterr()
    run_experiment(cfg, run, progress=False)
    err = capsys.readouterr().err
    assert "config.json is damaged" in err and "recomputing cached cells" in err and "recomputing the cached random" in err
    assert "Traceback" not in err
    assert list(csv.DictReader(open(run / "results.csv"))) == before
