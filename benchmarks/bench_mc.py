"""TruthfulQA MC scoring: shared prompt pass (KV cache) vs each choice read whole.

    python benchmarks/bench_mc.py [--model M] [--questions N] [--fold F] [--repeats R]

Both sides score the same answers (each question's mc1 ∪ mc2 choices) of the first N test
questions of fold F, in the same chunks of Q questions (``--questions-per-batch``, as
``evaluate_truthfulqa``; Q=1 is one question at a time):

- shared prefix: ``score_answer_tokens``: the chunk's prompts in one (left-padded) pass, then
  all their answers in one batch over the prompts' KV cache (what ``evaluate_truthfulqa`` runs);
- separate: ``score_full``: every ``prompt + answer`` of the chunk read whole, one
  right-padded batch (logits kept only where answer tokens are predicted, as on the shared side).

Tokenisation is done once, outside the timing. Prints the time of each (best of --repeats,
alternating order), the ratio separate / shared (target >= 1.5) and the largest absolute
difference between the two sets of log-probs.
"""

from __future__ import annotations

import argparse
import time

import torch

from real_lens.evaluation.forward import tokenize
from real_lens.evaluation.truthfulqa import answer_start, score_answer_tokens, score_full, select_mc_questions
from real_lens.models import DEFAULT_MODEL, load_model
from real_lens.tasks.truthfulqa import ANSWER_FORMAT, load_truthfulqa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--questions-per-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    model = load_model(args.model)
    task = load_truthfulqa()
    questions = select_mc_questions(task, task.folds[args.fold].test)[: args.questions]
    items = []  # (prompt tokens, [full tokens], [answer starts]) per question
    for q in questions:
        answers = [ANSWER_FORMAT.format(answer=a) for a in dict.fromkeys(q.mc1_answers + q.mc2_answers)]
        prompt = tokenize(model, q.prompt)
        full = [tokenize(model, q.prompt + a) for a in answers]
        items.append((prompt, full, [answer_start(prompt, f) for f in full]))
    n_answers = sum(len(full) for _, full, _ in items)
    n_separate = sum(len(f) for _, full, _ in items for f in full)
    n_shared = sum(len(p) + sum(len(f) - len(p) - 1 for f in full) for p, full, _ in items)
    n_merged = sum(s < len(p) for p, _, starts in items for s in starts)

    per_batch = args.questions_per_batch
    chunks = [items[i:i + per_batch] for i in range(0, len(items), per_batch)]

    def shared():
        return [s for c in chunks for s in score_answer_tokens(model, [p for p, _, _ in c], [f for _, f, _ in c])]

    def separate():
        out = []
        for c in chunks:
            flat = score_full(model, [f for _, full, _ in c for f in full], [s for _, _, starts in c for s in starts])
            for _, full, _ in c:
                out.append(flat[:len(full)])
                flat = flat[len(full):]
        return out

    times = {"shared prefix": [], "separate": []}
    results = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, fn in (("shared prefix", shared), ("separate", separate)):
                start = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    diff = max(
        abs(a - b)
        for qa, qb in zip(results["shared prefix"], results["separate"])
        for a, b in zip(qa, qb)
    )
    print(f"model {args.model}, fold {args.fold}: {len(items)} questions, {n_answers} answers "
          f"({n_merged} merged across the boundary), {args.questions_per_batch} questions per batch, "
          f"best of {args.repeats}, {torch.get_num_threads()} threads")
    print(f"  tokens fed (without padding): shared prefix {n_shared}, separate {n_separate}")
    for name, seconds in best.items():
        print(f"  {name:14s} {seconds:7.2f} s")
    print(f"ratio separate / shared: {best['separate'] / best['shared prefix']:.2f}  (target >= 1.5)")
    print(f"max |log-prob difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
