"""Scale-out on ``torch.distributed``: processes launched by ``torchrun`` share the work.

    torchrun --nproc-per-node 4 -m real_lens collect --task truthfulqa --out banks/tqa
    torchrun --nproc-per-node 4 -m real_lens score --bank banks/tqa --method real --device cuda --out scores/real

No launcher or scheduler of our own: ``torchrun`` starts the processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` (or a rendezvous); we join its
process group with ``init_process_group("env://")`` — NCCL when this process computes on a
GPU, gloo on the CPU.

- Collection (:func:`real_lens.activations.collect_activations` with ``shard=True``): the
  examples are cut into the same chunks a single process uses, each rank computes a
  contiguous run of chunks, and every chunk is broadcast from its owner, so every rank ends
  with the whole bank — bit-identical to one process, since each chunk is computed by the
  same code on the same examples in the same batches.
- Scoring (:func:`score_distributed`): each rank scores a contiguous slice of the module axis
  through the scorer's ``modules=`` argument; the slices are broadcast, so every rank holds
  the whole :class:`~real_lens.scoring.ModuleScores` (rank 0 writes it). Bit-identical to one
  process on the CPU because every module's result depends only on its own seed
  ``(seed, module, stage)`` and data, never on which other modules share its process
  (REAL's and ITI's tests check ``modules=`` slices against the full run).

Which scorers shard: any registered scorer that accepts ``modules=`` (today ``real`` and
``iti``). ``random`` is computed whole on every rank (a seeded permutation, microseconds).
Scorers that run the model and take no ``modules=`` (``patching``, ``attribution``) are refused
when the world has more than one process, with one line saying to run them in one process.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import RealLensError, ScoringError

# Every rank waits in a collective for the slowest one, e.g. while a resumed collection
# recomputes chunks that other ranks found cached; torch's default (10-30 min) is too short.
TIMEOUT = datetime.timedelta(hours=12)
# Model-free scorers cheap enough to compute whole on every rank.


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes ``torchrun`` started (one process: the defaults)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice ``[start, stop)`` of ``range(n)`` (see :func:`shard_bounds`)."""
        return shard_bounds(n, self.world_size)[self.rank]


def shard_bounds(n: int, world_size: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into ``world_size`` contiguous slices whose sizes differ by at most one,
    the larger ones first (so rank 0 has work whenever ``n >= 1``)."""
    if n < 0 or world_size < 1:
        raise ValueError(f"shard_bounds needs n >= 0 and world_size >= 1; got n={n}, world_size={world_size}")
    base, extra = divmod(n, world_size)
    bounds, start = [], 0
    for r in range(world_size):
        stop = start + base + (r < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def env_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def current_ranks() -> Ranks:
    """The ranks of the initialised default process group, or one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )


def rank_device(device: str | None, *, local_rank: int, model_parallel: bool = False) -> str | None:
    """The device one rank computes on: ``"cuda"`` (or no device on a CUDA machine) becomes
    ``cuda:<LOCAL_RANK>``, so the processes of a node use one GPU each; an explicit index or
    ``"cpu"`` stays. A model spread by a device map has no single device (``None``)."""
    if model_parallel:
        return None
    if device is None:
        return f"cuda:{local_rank}" if torch.cuda.is_available() else None
    if device == "cuda":
        return f"cuda:{local_rank}"
    return device


def init_distributed(device: str | None = None, *, model_parallel: bool = False) -> tuple[Ranks, str | None]:
    """Join the process group ``torchrun`` prepared; returns ``(ranks, this rank's device)``.

    Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing is initialised. The backend follows
    the device: NCCL when this rank computes on CUDA (or spreads a model over its node's GPUs
    with ``model_parallel``), gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        ranks = current_ranks()
        return ranks, rank_device(device, local_rank=ranks.local_rank, model_parallel=model_parallel)
    if env_world_size() <= 1:
        return Ranks(), device
    if not dist.is_available():
        raise RealLensError("torchrun started several processes, but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if model_parallel and local_world_size > 1:
        raise RealLensError(
            f"--device-map/--n-devices spread one model over a node's GPUs, but torchrun started "
            f"{local_world_size} processes on this node; run one process per node (--nproc-per-node 1) "
            "and more nodes (--nnodes)"
        )
    device = rank_device(device, local_rank=local_rank, model_parallel=model_parallel)
    on_cuda = (device is not None and torch.device(device).type == "cuda") or (model_parallel and torch.cuda.is_available())
    if on_cuda:
        if not torch.cuda.is_available() or torch.device(device or "cuda:0").index >= torch.cuda.device_count():
            raise RealLensError(
                f"rank with LOCAL_RANK {local_rank} wants {device or 'cuda:0'}, but this node has "
                f"{torch.cuda.device_count()} CUDA device(s); start at most that many processes per node"
            )
        torch.cuda.set_device(torch.device(device or "cuda:0"))
    dist.init_process_group(backend="nccl" if on_cuda else "gloo", init_method="env://", timeout=TIMEOUT)
    return current_ranks(), device


@contextlib.contextmanager
def distributed_session(device: str | None = None, *, model_parallel: bool = False):
    """``init_distributed`` for the length of a block; the group is destroyed at the end only
    if this block created it (a caller that initialised it keeps it)."""
    created = env_world_size() > 1 and dist.is_available() and not dist.is_initialized()
    finished = False
    try:
        yield init_distributed(device, model_parallel=model_parallel)
        finished = True
    finally:
        if created and dist.is_initialized():
            if finished:  # no rank tears its group down while another still holds a connection to it:
                dist.barrier()  # gloo then aborted a rank at exit ("terminate called without an active exception";
                # rarer with the barrier, but it still happens in the teardown after Python: real_lens.cli.entry)
            dist.destroy_process_group()


# --------------------------------------------------------------------------- collectives
# Shape and dtype travel as a small int64 header (dtype code, ndim, dims) instead of through
# broadcast_object_list, which pickles.
_DTYPE_CODES = {dt: i for i, dt in enumerate(
    (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.uint8, torch.bool)
)}
_MAX_DIMS = 8


def _collective_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_tensor(tensor: Tensor | None, *, src: int) -> Tensor:
    """``src``'s tensor on every rank: ``src`` passes it (and gets it back), the others pass
    ``None`` and receive a CPU copy. Shape and dtype travel first, so receivers need not know them."""
    device = _collective_device()
    dtypes = list(_DTYPE_CODES)
    if dist.get_rank() == src:
        if tensor.dtype not in _DTYPE_CODES:
            raise ValueError(f"cannot broadcast dtype {tensor.dtype}; expected one of {dtypes}")
        if tensor.ndim > _MAX_DIMS:
            raise ValueError(f"cannot broadcast a {tensor.ndim}-dimensional tensor; at most {_MAX_DIMS} dimensions")
        header = torch.tensor([_DTYPE_CODES[tensor.dtype], tensor.ndim, *tensor.shape], dtype=torch.int64)
        header = torch.nn.functional.pad(header, (0, _MAX_DIMS + 2 - header.numel()))
    else:
        header = torch.zeros(_MAX_DIMS + 2, dtype=torch.int64)
    header = header.to(device)
    dist.broadcast(header, src=src)
    header = header.cpu().tolist()
    dtype, shape = dtypes[header[0]], header[2:2 + header[1]]
    buffer = tensor.to(device).contiguous() if dist.get_rank() == src else torch.empty(shape, dtype=dtype, device=device)
    dist.broadcast(buffer, src=src)
    return buffer.cpu() if dist.get_rank() != src else tensor



def all_ranks_agree(text: str) -> bool:
    """Whether every rank passed the same string (compared by SHA-256, on every rank)."""
    digest = torch.tensor(list(hashlib.sha256(text.encode()).digest()), dtype=torch.int64)
    reference = broadcast_tensor(digest, src=0)
    differs = torch.tensor([int(not torch.equal(reference, digest))], device=_collective_device())
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    return not bool(differs.item())


# --------------------------------------------------------------------------- scoring
def score_distributed(method: str, bank, *, model=None, seed: int = 0, device=None, ranks: Ranks | None = None, **kwargs):
    """``get_scorer(method)(bank, ...)`` with the module axis split over the ranks.

    Every rank must call it with the same arguments; every rank gets the whole
    :class:`~real_lens.scoring.ModuleScores`, identical to what one process computes. In one
    process this is just the scorer.
    """
    from .scoring import get_scorer

    scorer = get_scorer(method)
    ranks = ranks or current_ranks()
    if not is_sharded(method, ranks):
        return scorer(bank, model=model, seed=seed, device=device, **kwargs)
    n_modules = bank.flat().shape[1]
    start, stop = ranks.bounds(n_modules)
    part = scorer(bank, model=model, seed=seed, device=device, modules=range(start, stop), **kwargs)
    return _assemble(part, n_modules)


def is_sharded(method: str, ranks: Ranks) -> bool:
    """Whether ``method`` splits its modules over ``ranks``; ``False`` when every rank computes it
    whole (one process, or a cheap model-free scorer). Raises for a scorer that can do neither."""
    from .scoring import scorer_spec

    spec = scorer_spec(method)
    if not ranks.is_distributed or spec.every_rank:
        return False
    if not spec.shardable:
        raise ScoringError(
            f"{method} is not split across processes (it runs the model and takes no module slice); "
            f"run `real-lens score --method {method}` in one process, without torchrun"
        )
    return True


def _assemble(part, n_modules: int):
    """Every rank's slice of ``part``'s scores and diagnostics, put together on every rank."""
    world = dist.get_world_size()
    names = sorted(part.diagnostics)
    described = json.dumps(
        [part.method, part.config, part.meta, names, list(part.scores.shape)], sort_keys=True, default=str
    )
    if not all_ranks_agree(described):
        raise ScoringError(
            f"the {part.method} scorer gave different metadata on different ranks; its meta and config must not "
            "depend on the module slice (run in one process, and report this as a bug)"
        )
    bounds = shard_bounds(n_modules, world)
    tensors = {"": part.scores, **{name: part.diagnostics[name] for name in names}}
    whole = {}
    for name, tensor in tensors.items():
        flat = tensor.reshape(-1).clone()
        for src, (start, stop) in enumerate(bounds):
            if stop > start:
                flat[start:stop] = broadcast_tensor(flat[start:stop], src=src)
        whole[name] = flat.reshape(tensor.shape)
    return replace(part, scores=whole.pop(""), diagnostics=whole)
