"""TruthfulQA MC scoring under the standard prompt: demonstrations run once vs once per question.

    python benchmarks/bench_mc.py [--model M] [--questions N] [--fold F] [--mc-prompt STYLE] [--repeats R]
                                  [--device cuda] [--dtype bfloat16]

Three sides score the same answers (each question's mc1 ∪ mc2 choices) of the first N test
questions of fold F, in the same chunks of Q questions (``--questions-per-batch``, as
``evaluate_truthfulqa``):

- shared demonstrations: what ``evaluate_truthfulqa`` runs — the style's prefix (instruction + the
  six "qa" demonstrations, METHOD.md §6a) in ONE pass for the whole run, its KV cache copied under
  every chunk; then each chunk's question prompts in one pass and all their answers in one batch;
- demonstrations per question: the same, but every question's full prompt (demonstrations
  included) is fed in the chunk's prompt pass (what evaluation did before demonstrations were shared);
- bare prompt: the plain ``Q: {question} A:`` prompt (the old default), to show what the long
  standard prompt costs.

Tokenisation is done once, outside the timing. Prints the time of each (best of --repeats,
alternating order), the ratio per-question / shared (target ≥ 1.5), shared / bare, and the largest
absolute difference between the shared and per-question log-probs (same tokens, same weights:
only the batching of the matrix products differs).
"""

from __future__ import annotations

import argparse
import time

import torch

from real_lens.tokens import tokenize
from real_lens.evaluation.truthfulqa import SharedPrefix, score_answer_tokens, select_mc_questions
from real_lens.models import DEFAULT_MODEL, load_model
from real_lens.tasks.truthfulqa import ANSWER_FORMAT, DEFAULT_MC_PROMPT, MC_PROMPT_STYLES, load_truthfulqa


def main(argv=None) -> dict[str, float]:
    """Prints the comparison; returns the best seconds of each side and the answers scored."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--mc-prompt", default=DEFAULT_MC_PROMPT, choices=[s for s in MC_PROMPT_STYLES if s != "plain"])
    parser.add_argument("--questions-per-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default=None, help="torch device (default: TransformerLens's choice)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args(argv)

    model = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    device = next(model.parameters()).device
    task = load_truthfulqa()
    questions = select_mc_questions(task, task.folds[args.fold].test)[: args.questions]
    styles = {name: task.eval_data["mc_prompts"][name] for name in (args.mc_prompt, "plain")}

    def tokenised(style):  # (prompt tokens, [prompt + answer tokens]) per question
        out = []
        for q in questions:
            text = styles[style].format(q.question)
            answers = [ANSWER_FORMAT.format(answer=a) for a in dict.fromkeys(q.mc1_answers + q.mc2_answers)]
            out.append((tokenize(model, text), [tokenize(model, text + a) for a in answers]))
        return out

    long_items, bare_items = tokenised(args.mc_prompt), tokenised("plain")
    per_batch = args.questions_per_batch

    def run(items, *, share: bool):
        out = []
        prefix = SharedPrefix.build(model, styles[args.mc_prompt].prefix, [p for p, _ in items]) if share else None
        for i in range(0, len(items), per_batch):
            chunk = items[i:i + per_batch]
            out += score_answer_tokens(model, [p for p, _ in chunk], [f for _, f in chunk], prefix=prefix)
        return out

    sides = {
        "shared demonstrations": lambda: run(long_items, share=True),
        "demonstrations per question": lambda: run(long_items, share=False),
        "bare prompt": lambda: run(bare_items, share=False),
    }
    times = {name: [] for name in sides}
    results = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, fn in sides.items():
                start = time.perf_counter()
                results[name] = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    diff = max(abs(a - b) for qa, qb in zip(results["shared demonstrations"], results["demonstrations per question"])
               for a, b in zip(qa, qb))
    n_prefix = len(SharedPrefix.build(model, styles[args.mc_prompt].prefix, [p for p, _ in long_items]))
    n_answers = sum(len(f) for _, f in long_items)
    print(f"model {args.model} ({args.dtype} on {device}), fold {args.fold}: {len(questions)} questions, {n_answers} answers, "
          f"prompt {args.mc_prompt} ({n_prefix} shared prefix tokens; bare prompts "
          f"{sum(len(p) for p, _ in bare_items) / len(bare_items):.0f} tokens on average), "
          f"{per_batch} questions per batch, best of {args.repeats}, {torch.get_num_threads()} threads")
    for name, seconds in best.items():
        print(f"  {name:28s} {seconds:7.2f} s")
    print(f"ratio per question / shared: {best['demonstrations per question'] / best['shared demonstrations']:.2f}"
          "  (target >= 1.5)")
    print(f"cost of the standard prompt, shared / bare: {best['shared demonstrations'] / best['bare prompt']:.2f}")
    print(f"max |log-prob difference| shared vs per question: {diff:.2e}")
    return {**best, "answers": n_answers}


if __name__ == "__main__":
    main()
