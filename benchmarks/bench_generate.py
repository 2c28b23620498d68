"""Steered greedy generation through the bridge vs plain Hugging Face ``generate`` with the same steering.

    python benchmarks/bench_generate.py [--model M] [--prompt-tokens 109] [--new-tokens 12]
                                        [--heads 16] [--alpha 5] [--repeats 3] [--items 16] [--cpu-time]

1. One prompt (an NQ-Swap prompt of about ``--prompt-tokens`` tokens, BOS included):
   ``generate_text`` inside ``Steering.applied`` (hooks on ``blocks.{l}.attn.hook_z``) vs a
   separately loaded plain HF model whose steered layers carry a forward pre-hook on
   ``o_proj`` adding the same per-head offsets (``o_proj``'s input is ``hook_z`` with the heads
   concatenated), run by ``model.generate(do_sample=False)``; and TransformerLens's own
   ``TransformerBridge.generate`` loop (what real-lens used before). The three must give the
   same tokens (asserted). Prints tokens/s (new tokens / seconds of the whole call, prompt
   included) and the ratio generate_text / HF (target >= 0.8).
   The floor, measured on the plain HF model in the same run: one forward of the prompt
   (last-position logits only) plus ``new_tokens - 1`` forwards of one token with a KV cache of
   the prompt's length; the per-token floor is that one-token forward. The same two forwards
   through the steered bridge show how much of the gap is the bridge's forward itself.
2. NQ-Swap evaluation (``--items`` real items, steered): one item at a time through
   ``TransformerBridge.generate`` (12 tokens each; the evaluation before) and through the plain
   HF model's ``generate`` (same hooks), vs ``evaluate_nq_swap`` (batched, a row stops when its
   first line is complete). Predictions must be equal (asserted). The per-item floor there is
   the item's prompt forward.

Every measurement of part 1 runs once per round, best of ``--repeats`` rounds, so a change of
load hits all of them; part 2 runs once per side.
"""

from __future__ import annotations

import argparse
import time

import torch

from real_lens.tokens import tokenize
from real_lens.evaluation.nq_swap import evaluate_nq_swap, first_line
from real_lens.generation import generate_greedy, generate_text
from real_lens.models import DEFAULT_MODEL, load_model
from real_lens.models.loading import load_hf
from real_lens.steering import Steering
from real_lens.tasks import load_task


def build_steering(model, tokens, *, n_heads: int, alpha: float, seed: int = 0) -> Steering:
    """``n_heads`` random heads, random unit directions, σ = the std of the projection of the prompt's hook_z."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    flat = torch.randperm(cfg.n_layers * cfg.n_heads, generator=gen)[:n_heads].sort().values
    modules = tuple((int(i) // cfg.n_heads, int(i) % cfg.n_heads) for i in flat)
    directions = torch.randn(n_heads, cfg.d_head, generator=gen)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens[None], names_filter=lambda name: name.endswith("attn.hook_z"))
    sigmas = torch.stack([
        (cache[f"blocks.{layer}.attn.hook_z"][0, :, head].cpu() @ directions[i]).std()
        for i, (layer, head) in enumerate(modules)
    ])
    return Steering("head_z", modules, directions, sigmas, torch.ones(n_heads), alpha, method="bench")


def add_o_proj_hooks(hf_model, steering: Steering, n_heads: int) -> list:
    """The same steering on a plain HF model: add each layer's [n_heads, d_head] offset to o_proj's input."""
    handles = []
    for layer, offset in steering.layer_offsets(n_heads).items():
        delta = offset.flatten()

        def pre_hook(module, args, delta=delta):
            return (args[0] + delta.to(args[0].dtype),) + tuple(args[1:])

        handles.append(hf_model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(pre_hook))
    return handles


def forward_seconds(run, tokens, clock) -> tuple[float, float]:
    """(one prompt forward, best of three one-token forwards with a KV cache of the prompt).

    ``run(ids, **kwargs)`` returns ``(logits, cache)``; logits of the last position only."""
    ids = tokens[None]
    step = []
    with torch.inference_mode():
        start = clock()
        logits, cache = run(ids, use_cache=True)
        prefill = clock() - start
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        position = torch.tensor([[ids.shape[1]]])
        mask = torch.ones(1, ids.shape[1] + 1, dtype=torch.long)
        for _ in range(3):
            start = clock()
            run(nxt, past_key_values=cache, position_ids=position, attention_mask=mask)
            step.append(clock() - start)
            cache.crop(-1)  # back to the prompt's length
    return prefill, min(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompt-tokens", type=int, default=109)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--heads", type=int, default=16, help="steered heads (random, seeded)")
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=16, help="NQ-Swap items for part 2 (0: skip it)")
    parser.add_argument("--batch-size", type=int, default=32, help="items per decoding call in part 2")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time instead of the wall clock (on a shared machine "
                             "with one thread, it leaves out the time spent waiting for a core)")
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter

    model = load_model(args.model)
    # A separately loaded HF model: the bridge wraps its own HF modules in place, so
    # model.original_model would not be a plain forward.
    hf_model, _, _ = load_hf(args.model, dtype=torch.float32)
    task = load_task("nq-swap")
    items = [q for g in task.groups for q in task.eval_data["qa"][g]]

    # ---- 1. one prompt -------------------------------------------------------------------
    candidates = items[:400]
    lengths = [len(tokenize(model, q.prompt)) for q in candidates]
    best = min(range(len(candidates)), key=lambda i: abs(lengths[i] - args.prompt_tokens))
    prompt, tokens = candidates[best].prompt, tokenize(model, candidates[best].prompt)
    steering = build_steering(model, tokens, n_heads=args.heads, alpha=args.alpha)
    n_new = args.new_tokens
    add_o_proj_hooks(hf_model, steering, model.cfg.n_heads)  # kept for the rest of the run

    def run_generate_text():
        with steering.applied(model):
            return generate_text(model, prompt, max_new_tokens=n_new, chat=False)

    def run_hf():
        with torch.inference_mode():
            out = hf_model.generate(tokens[None], attention_mask=torch.ones_like(tokens)[None],
                                    max_new_tokens=n_new, do_sample=False)
        return out[0, len(tokens):]

    def run_bridge_generate():
        with steering.applied(model), torch.inference_mode():
            out = model.generate(tokens[None], max_new_tokens=n_new, do_sample=False, use_past_kv_cache=True,
                                 verbose=False)
        return out[0, len(tokens):].cpu()

    with steering.applied(model), torch.inference_mode():
        (ours,) = generate_greedy(model, [tokens], max_new_tokens=n_new)
    hf_tokens, tl_tokens = run_hf(), run_bridge_generate()
    if not (torch.equal(ours, hf_tokens) and torch.equal(ours, tl_tokens)):
        raise SystemExit(f"the sides generated different tokens:\n  ours {ours.tolist()}\n  HF   {hf_tokens.tolist()}"
                         f"\n  TL   {tl_tokens.tolist()}")
    text = run_generate_text()
    assert text == hf_model_decode(model, hf_tokens), (text, hf_model_decode(model, hf_tokens))

    def run_hf_forward(ids, **kwargs):
        out = hf_model(ids, logits_to_keep=1, **kwargs)
        return out.logits, out.past_key_values

    def run_bridge_forward(ids, **kwargs):
        with steering.applied(model):
            return model(ids, return_type="logits_and_cache", logits_to_keep=1, **kwargs)

    sides = {"generate_text (bridge, steered)": run_generate_text, "plain HF generate + o_proj hooks": run_hf,
             "TransformerBridge.generate (before)": run_bridge_generate}
    times = {name: [] for name in sides}
    forwards = {"hf": [], "bridge": []}
    for _ in range(args.repeats):  # every measurement once per round, so load drifts hit all of them
        for name, fn in sides.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
        forwards["hf"].append(forward_seconds(run_hf_forward, tokens, clock))
        forwards["bridge"].append(forward_seconds(run_bridge_forward, tokens, clock))
    prefill, step = (min(t[i] for t in forwards["hf"]) for i in (0, 1))
    bridge_prefill, bridge_step = (min(t[i] for t in forwards["bridge"]) for i in (0, 1))
    floor = prefill + (len(ours) - 1) * step
    n = len(ours)
    print(f"model {args.model}, prompt {len(tokens)} tokens, {n} new tokens (asserted equal on all sides), "
          f"{len(steering.modules)} steered heads in {len(steering.layer_offsets(model.cfg.n_heads))} layers, "
          f"best of {args.repeats}, {torch.get_num_threads()} threads, {'CPU' if args.cpu_time else 'wall-clock'} time")
    for name, ts in times.items():
        print(f"  {name:37s} {min(ts):6.2f} s  {n / min(ts):6.1f} tokens/s")
    print(f"  {'floor (plain HF forwards)':37s} {floor:6.2f} s  {n / floor:6.1f} tokens/s  "
          f"= prompt {prefill * 1000:.0f} ms + {n - 1} x one-token step {step * 1000:.0f} ms")
    ours_s, hf_s = min(times["generate_text (bridge, steered)"]), min(times["plain HF generate + o_proj hooks"])
    print(f"  {'one bridge forward (steered)':37s} prompt {bridge_prefill * 1000:.0f} ms, one-token step "
          f"{bridge_step * 1000:.0f} ms  = {prefill / bridge_prefill:.2f} and {step / bridge_step:.2f} of plain HF's speed")
    bridge_floor = bridge_prefill + (n - 1) * bridge_step
    print(f"ratio generate_text / plain HF (tokens/s): {hf_s / ours_s:.2f}  (target >= 0.8); "
          f"generate_text / floor: {floor / ours_s:.2f}; per-token floor {step * 1000:.0f} ms "
          f"(one token, KV cache of {len(tokens)})")
    print(f"generate_text / its own forwards through the bridge ({bridge_floor:.2f} s): {bridge_floor / ours_s:.2f}; "
          f"so the bridge's forward bounds the ratio at {floor / bridge_floor:.2f}")

    # ---- 2. NQ-Swap evaluation ---------------------------------------------------------------
    if args.items > 0:
        compare_nq_swap(model, hf_model, steering, items[: args.items], batch_size=args.batch_size, clock=clock)


def compare_nq_swap(model, hf_model, steering, chosen, *, batch_size: int, clock) -> None:
    """Steered NQ-Swap predictions: one item at a time (TL's loop, and plain HF) vs evaluate_nq_swap, same predictions."""
    prompts = [tokenize(model, q.prompt) for q in chosen]
    decode = lambda ids: first_line(model.tokenizer.decode(ids, skip_special_tokens=True))  # noqa: E731

    def bridge_one_at_a_time():
        with steering.applied(model), torch.inference_mode():
            return tuple(decode(model.generate(p[None], max_new_tokens=12, do_sample=False, use_past_kv_cache=True,
                                               verbose=False)[0, len(p):]) for p in prompts)

    def hf_one_at_a_time():  # hf_model still carries the o_proj hooks
        with torch.inference_mode():
            return tuple(decode(hf_model.generate(p[None], attention_mask=torch.ones_like(p)[None], max_new_tokens=12,
                                                  do_sample=False)[0, len(p):]) for p in prompts)

    def batched():
        return evaluate_nq_swap(model, chosen, steering=steering, batch_size=batch_size).predictions

    before, hf, ours = ("one at a time: TransformerBridge.generate (before)",
                        "one at a time: plain HF generate + o_proj hooks",
                        f"evaluate_nq_swap (batch {batch_size}, first-line stop)")
    sides = {before: bridge_one_at_a_time, hf: hf_one_at_a_time, ours: batched}
    seconds, predictions = {}, {}
    for name, fn in sides.items():
        start = clock()
        predictions[name] = fn()
        seconds[name] = clock() - start
    first = next(iter(predictions.values()))
    for name, got in predictions.items():
        if got != first:
            diff = [(i, a, b) for i, (a, b) in enumerate(zip(first, got)) if a != b]
            raise SystemExit(f"{name} predicts differently from one item at a time: {diff}")
    prompt_floor = 0.0
    with torch.inference_mode():
        for p in prompts:
            start = clock()
            hf_model(p[None], logits_to_keep=1)
            prompt_floor += clock() - start
    n = len(chosen)
    print(f"\nNQ-Swap evaluation, {n} items ({sum(map(len, prompts))} prompt tokens, {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} each), steered, ≤ 12 new tokens, predictions asserted equal on all sides")
    for name, s in seconds.items():
        print(f"  {name:52s} {s:6.1f} s  {s / n:5.2f} s/item")
    print(f"  {'floor: the prompt forwards alone (plain HF)':52s} {prompt_floor:6.1f} s  {prompt_floor / n:5.2f} s/item")
    print(f"evaluate_nq_swap: {seconds[before] / seconds[ours]:.1f}x faster than before, "
          f"{seconds[hf] / seconds[ours]:.1f}x plain HF one at a time; floor / evaluate_nq_swap "
          f"{prompt_floor / seconds[ours]:.2f}")


def hf_model_decode(model, new_tokens) -> str:
    return model.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


if __name__ == "__main__":
    main()
