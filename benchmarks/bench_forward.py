"""Where a forward's time goes on a real model: the bridge vs plain Hugging Face, and the unembedding.

    python benchmarks/bench_forward.py [--model M] [--questions N] [--repeats R]

On the same right-padded batch of TruthfulQA MC sequences (prompt + each answer, ``plain`` prompt):

- tokens/s of the bridge's forward vs a plain HF forward of the same weights (a twin HF model that
  shares the bridge's tensors, so a 1.5B model is held once);
- the unembedding on positions nobody reads: the bridge run as activation collection runs it
  (``return_type=None``) with and without ``logits_to_keep=1``, and the HF twin likewise;
- ``evaluate_truthfulqa`` (shared prompt pass, answers over its cache) vs full HF forwards of every
  prompt + answer, the naive way to get the same log-probs.

Sides alternate within each repeat; best of ``--repeats``. Times are this process's CPU time
(``time.process_time``), which a shared, loaded machine disturbs far less than wall time; run it
with OMP_NUM_THREADS=1 so that CPU time is the forward's time on one core.
"""

from __future__ import annotations

import argparse
import time

import torch

from real_lens.evaluation.truthfulqa import evaluate_truthfulqa
from real_lens.models import DEFAULT_MODEL, load_model
from real_lens.tasks import load_task
from real_lens.tasks.truthfulqa import ANSWER_FORMAT
from real_lens.evaluation import select_mc_questions
from real_lens.tokens import right_pad


def plain_twin(bridge):
    """A plain HF model of the bridge's architecture whose parameters *are* the bridge's tensors."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    hf = bridge.original_model
    with init_empty_weights():  # parameters on meta, buffers (rotary inv_freq) real
        twin = AutoModelForCausalLM.from_config(hf.config, attn_implementation="eager")
    state = {k.replace("._original_component", ""): v for k, v in hf.state_dict().items()}
    state = {k: v for k, v in state.items() if k in twin.state_dict()}
    twin.load_state_dict(state, strict=True, assign=True)
    return twin.eval()


def best_of(repeats: int, sides: dict) -> dict[str, float]:
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            start = time.process_time()
            with torch.inference_mode():
                fn()
            times[name].append(time.process_time() - start)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    run(load_model(args.model, device="cpu"), name=args.model, n_questions=args.questions, repeats=args.repeats)


def run(model, *, name: str, n_questions: int, repeats: int) -> None:
    twin = plain_twin(model)
    task = load_task("truthfulqa")
    questions = select_mc_questions(task, task.groups[:n_questions])
    prompt = "Q: {} A:"
    texts = [prompt.format(q.question) + ANSWER_FORMAT.format(answer=a)
             for q in questions for a in dict.fromkeys(q.mc1_answers + q.mc2_answers)]
    seqs = [model.to_tokens(t)[0] for t in texts]
    batch = right_pad(model, seqs)
    n_tokens = sum(len(s) for s in seqs)
    with torch.inference_mode():
        same = torch.equal(model(batch), twin(batch, use_cache=False).logits)
    print(f"{name}: {len(seqs)} sequences, {n_tokens} tokens ({batch.numel()} with padding), "
          f"{torch.get_num_threads()} thread(s); bridge logits == twin HF logits: {same}")

    t = best_of(repeats, {
        "HF forward (all logits)": lambda: twin(batch, use_cache=False),
        "HF forward (logits_to_keep=1)": lambda: twin(batch, use_cache=False, logits_to_keep=1),
        "bridge forward (all logits)": lambda: model(batch),
        "bridge as collection ran it (return_type=None)": lambda: model(batch, return_type=None),
        "bridge as collection runs it now (+ logits_to_keep=1)": lambda: model(batch, return_type=None,
                                                                               logits_to_keep=1),
        "evaluate_truthfulqa (shared prompt pass)": lambda: evaluate_truthfulqa(
            model, questions, mc_prompt="plain", progress=False),
    })
    for name, seconds in t.items():
        print(f"  {name:<55} {seconds:7.2f} s CPU  {n_tokens / seconds:7.1f} tok/s")
    hf_all, hf_one = t["HF forward (all logits)"], t["HF forward (logits_to_keep=1)"]
    print(f"bridge / HF forward speed: {hf_all / t['bridge forward (all logits)']:.2f}")
    print(f"unembedding on unread positions: HF {1 - hf_one / hf_all:.1%} of a forward; collection "
          f"{1 - t['bridge as collection runs it now (+ logits_to_keep=1)'] / t['bridge as collection ran it (return_type=None)']:.1%}")
    print(f"evaluate_truthfulqa vs full HF forwards of every prompt + answer: "
          f"{hf_all / t['evaluate_truthfulqa (shared prompt pass)']:.2f}x")


if __name__ == "__main__":
    main()
