"""collect_activations(model, task) → ActivationBank, with a resumable on-disk cache.

Each example is read once: ``prompt + answer`` runs through the model and a forward hook at
every layer's site keeps only the readout:

- ``readout="last"``: the last token's activation (the paper's readout);
- ``readout="mean_answer"``: the mean over the answer's tokens.

Batches are right-padded. Under causal attention a real token never attends to the padding
after it and its position ids are unchanged, so padded batches give the same activations
as one example at a time (tests/…/test_activations.py checks this, to float tolerance).
Examples are sorted by length into batches to keep padding small.

Cache: ``<cache>/banks/<key>/`` where the key hashes the model identity, the examples, the
site, the readout, the prompt format, the storage dtype and the package version; the bank is a
verified artifact (manifest with each file's SHA-256). While it is collected, finished chunks of
examples (``chunk_size``, taken in length order so batches stay tightly packed) are written to
``<key>.chunks/`` as they complete, each holding its own checksum, so an interrupted
collection resumes. A damaged or mismatched chunk or bank is recomputed (and said so on
stderr), never used. One process collects a given bank; another that asks for it meanwhile
waits for it and then reads it. Under ``torchrun`` (``shard=True``) each rank computes a
contiguous run of the same chunks and every chunk is broadcast from the rank that made it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import hooks
from ._version import __version__
from .bank import ActivationBank
from .tokens import right_pad, tokenize
from .distributed import Ranks, broadcast_tensor, current_ranks, shard_bounds
from .errors import ArtifactError, BankError, RealLensError, unknown_name_error
from .io import notice, read_sealed_tensors, write_sealed_tensors
from .locks import output_lock
from .names import READOUTS
from .models import DTYPES as BANK_DTYPES
from .models import cache_root, dtype_name, model_identity
from .tasks.base import Example, Task, check_examples



@dataclass(frozen=True)
class _Tokenized:
    tokens: list[Tensor]  # one 1-D tensor per example (BOS included, as the model adds it)
    answer_start: list[int]  # index of the first answer token


def collect_activations(
    model,
    task_or_examples: Task | Sequence[Example],
    *,
    site: str = "head_z",
    readout: str = "last",
    batch_size: int = 16,
    chunk_size: int = 64,
    dtype: torch.dtype | str = torch.float32,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    shard: bool = False,
) -> ActivationBank:
    """Activations ``[example, layer, head, d_head]`` (head site) or ``[example, layer, d_model]``.

    Examples run in chunks of ``chunk_size`` (the unit of the resumable cache), each sorted by
    length into batches of ``batch_size``. ``dtype``: how the bank stores activations
    (float32, bfloat16 or float16; recorded in ``meta["dtype"]``); the readout itself is taken
    in float32 from the model's activations, whatever the model's dtype.

    ``shard=True`` under ``torchrun`` (an initialised default process group): every rank must
    call this with the same arguments; each computes a contiguous run of the chunks and
    every rank gets the whole bank, identical to one process's (same chunks, same batches).
    """
    hooks.check_site(site)
    if readout not in READOUTS:
        raise unknown_name_error("readout", readout, READOUTS)
    if batch_size < 1 or chunk_size < 1:
        raise RealLensError(f"batch_size and chunk_size must be >= 1; got {batch_size} and {chunk_size}")
    dtype = _bank_dtype(dtype)
    if isinstance(task_or_examples, Task):
        task_name, prompt_format = task_or_examples.name, task_or_examples.prompt_format
        examples = tuple(task_or_examples.examples)
    else:
        examples = tuple(task_or_examples)
        check_examples(examples, source="examples")
        task_name, prompt_format = "examples", "prompt+answer"

    meta = {
        "model": model_identity(model),
        "site": site,
        "hook": hooks.hook_template(site),
        "readout": readout,
        "task": task_name,
        "prompt_format": prompt_format,
        "n_layers": model.cfg.n_layers,
        "real_lens_version": __version__,
    }
    if dtype != torch.float32:  # float32 banks keep the cache keys they had before banks recorded a dtype
        meta["dtype"] = dtype_name(dtype)
    key = _cache_key(meta, examples)
    meta.update(cache_key=key, dtype=dtype_name(dtype))
    ranks = current_ranks() if shard else Ranks()
    if not cache:  # the same chunks as a cached collection, so cached and uncached banks are equal bit for bit
        acts = _collect_in_chunks(model, examples, key, None, site, readout, batch_size, chunk_size, progress, dtype, ranks)
        return ActivationBank(acts, examples, meta)

    folder = Path(cache_dir or cache_root() / "banks") / key
    bank = _load_cached_bank(folder, key) if ranks.is_main else None
    if ranks.is_distributed:  # only rank 0 reads the cache; if it holds the bank, it sends it to the others
        found = broadcast_tensor(torch.tensor([int(bank is not None)]), src=0)
        if bool(found.item()):
            acts = broadcast_tensor(bank.acts if ranks.is_main else None, src=0)  # every rank takes part
            return bank if ranks.is_main else ActivationBank(acts, examples, meta)
    elif bank is not None:
        return bank
    # One process collects a bank; another one asking for it waits, then reuses it. Under torchrun
    # rank 0 holds the lock for its group (the other ranks write only their own chunk files).
    with output_lock(folder, wait=True) if ranks.is_main else contextlib.nullcontext():
        if not ranks.is_distributed:
            bank = _load_cached_bank(folder, key, quiet=True)
            if bank is not None:
                return bank
        chunks_dir = folder.parent / f"{key}.chunks"
        acts = _collect_in_chunks(model, examples, key, chunks_dir, site, readout, batch_size, chunk_size, progress,
                                  dtype, ranks)
        bank = ActivationBank(acts, examples, meta)
        if ranks.is_main:
            bank.save(folder, replaces=None)
            shutil.rmtree(chunks_dir, ignore_errors=True)
    return bank


def _collect_in_chunks(model, examples, key, chunks_dir: Path | None, site, readout, batch_size, chunk_size, progress,
                       dtype: torch.dtype, ranks: Ranks) -> Tensor:
    """Collect ``chunk_size`` examples at a time (shortest texts first), each chunk saved when done
    (``chunks_dir`` None: not saved). Under torchrun each rank computes a contiguous run of the chunks,
    and every chunk is then broadcast from the rank that computed it."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text))
    chunks = [order[i:i + chunk_size] for i in range(0, len(order), chunk_size)]
    first, stop = ranks.bounds(len(chunks))
    mine: dict[int, Tensor] = {}
    for c in tqdm(range(first, stop), desc=f"collect {site}", unit="chunk", disable=not progress or len(chunks) == 1):
        part = tuple(examples[i] for i in chunks[c])
        chunk_key = _cache_key({"bank": key, "chunk": c, "chunk_size": chunk_size}, part)
        path = chunks_dir / f"chunk_{c:05d}.safetensors" if chunks_dir is not None else None
        acts = _load_chunk(path, chunk_key) if path is not None else None
        if acts is None:
            acts = _collect(model, part, site, readout, batch_size, progress and len(chunks) == 1).to(dtype)
            if path is not None:
                write_sealed_tensors(path, {"acts": acts, "key": _key_tensor(chunk_key)})
        mine[c] = acts
    if ranks.is_distributed:
        owners = [r for r, (a, b) in enumerate(shard_bounds(len(chunks), ranks.world_size)) for _ in range(a, b)]
        mine = {c: broadcast_tensor(mine.get(c), src=owners[c]) for c in range(len(chunks))}
    out = torch.empty((len(examples), *mine[0].shape[1:]), dtype=mine[0].dtype)
    for c, idx in enumerate(chunks):
        out[idx] = mine[c]
    return out


def _bank_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str) and dtype in BANK_DTYPES:
        return BANK_DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in BANK_DTYPES.values():
        return dtype
    raise RealLensError(f"unsupported bank dtype {dtype!r}; expected one of {', '.join(BANK_DTYPES)}")


# --------------------------------------------------------------------------- forward
def _collect(model, examples, site, readout, batch_size, progress) -> Tensor:
    tokenized = _tokenize(model, examples)
    n_layers = model.cfg.n_layers
    order = sorted(range(len(examples)), key=lambda i: len(tokenized.tokens[i]))
    out: Tensor | None = None
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=f"collect {site}", unit="batch", disable=not progress):
        seqs = [tokenized.tokens[i] for i in batch]
        lengths = torch.tensor([len(s) for s in seqs])
        tokens = right_pad(model, seqs)
        tokens = tokens.to(model.cfg.device)
        weights = _readout_weights(readout, lengths, [tokenized.answer_start[i] for i in batch], tokens.shape[1])
        weights = weights.to(tokens.device)
        captured: list[Tensor | None] = [None] * n_layers

        def keep(act: Tensor, hook, layer: int) -> None:
            # act: [batch, pos, n_heads, d_head] or [batch, pos, d_model]; weights: [batch, pos]
            w = weights.to(act.dtype)
            captured[layer] = torch.einsum("bp,bp...->b...", w, act).detach().float().cpu()

        fwd_hooks = [
            (hooks.hook_name(site, layer), lambda act, hook, layer=layer: keep(act, hook, layer))
            for layer in range(n_layers)
        ]
        with torch.inference_mode():
            # Nobody reads the logits: logits_to_keep=1 keeps the unembedding (return_type=None alone
            # still runs it) off every position but the last (measured: 15-16% of a Qwen2.5-1.5B collection forward).
            model.run_with_hooks(tokens, fwd_hooks=fwd_hooks, return_type=None, logits_to_keep=1)
        acts = torch.stack(captured, dim=1)  # [batch, layer, ...]
        if out is None:
            out = torch.empty((len(examples), *acts.shape[1:]), dtype=torch.float32)
        out[batch] = acts
    return out


def _tokenize(model, examples) -> _Tokenized:
    tokens, starts = [], []
    for e in examples:
        full, prompt = tokenize(model, e.text), tokenize(model, e.prompt)
        n = min(len(prompt), len(full))
        # The answer starts where the prompt's tokens stop matching (BPE may merge across).
        start = int((prompt[:n] != full[:n]).nonzero()[0, 0]) if (prompt[:n] != full[:n]).any() else n
        tokens.append(full)
        starts.append(min(start, len(full) - 1))
    return _Tokenized(tokens, starts)


def _readout_weights(readout: str, lengths: Tensor, answer_start: list[int], width: int) -> Tensor:
    """``[batch, pos]`` weights: one-hot on the last token, or uniform over the answer tokens."""
    positions = torch.arange(width)
    if readout == "last":
        return (positions[None, :] == (lengths - 1)[:, None]).float()
    start = torch.tensor(answer_start)
    mask = (positions[None, :] >= start[:, None]) & (positions[None, :] < lengths[:, None])
    return mask.float() / mask.sum(dim=1, keepdim=True)


# --------------------------------------------------------------------------- cache
def _cache_key(meta: dict, examples: Sequence[Example]) -> str:
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for e in examples:
        digest.update(json.dumps([e.prompt, e.answer, e.label, e.group]).encode())
    return digest.hexdigest()[:24]


def _key_tensor(key: str) -> Tensor:
    return torch.tensor(list(key.encode()), dtype=torch.uint8)


def _load_chunk(path: Path, key: str) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        stored = read_sealed_tensors(path)
        if bytes(stored["key"].tolist()).decode() == key:
            return stored["acts"]
        reason = "it belongs to another collection"
    except (ArtifactError, KeyError, UnicodeDecodeError) as exc:
        reason = str(exc)
    notice(f"recomputing the cached chunk {path.name}: {reason}")
    path.unlink(missing_ok=True)
    return None


def _load_cached_bank(folder: Path, key: str, *, quiet: bool = False) -> ActivationBank | None:
    """The cached bank, or None when it is absent or damaged (then it is rebuilt, and said so)."""
    if not folder.exists():
        return None
    try:
        bank = ActivationBank.load(folder, allow_unverified=False)
        if bank.meta.get("cache_key") == key:
            return bank
        reason = "it was collected for another key"
    except BankError as exc:
        reason = str(exc)
    if not quiet:
        notice(f"rebuilding the cached activation bank {folder.name}: {reason}")
    return None
