"""What each ``real-lens`` command does: thin glue from parsed options to the library, then a printout."""

from __future__ import annotations

import contextlib
import logging
import math

from .. import hooks
from ..configs import read_overrides
from ..errors import RealLensError
from ..threads import state_threads

logger = logging.getLogger(__name__)

DEFAULT_ALPHA = 15.0  # steer/inspect/export without --alpha or --kl-target (README: prefer --kl-target)


def load_model_for(args):
    """The model the command's flags name (default: the embedded one), placed as they say."""
    from ..models import DEFAULT_MODEL, load_model

    return load_model(args.model or DEFAULT_MODEL, **_model_options(args))


def _model_options(args) -> dict:
    """load_model's placement options from the flags, checked (so mistakes surface before any work)."""
    from ..models import parse_device_map, resolve_placement

    options = dict(device=args.device, dtype=args.dtype, device_map=parse_device_map(args.device_map),
                   n_devices=args.n_devices)
    resolve_placement(device=options["device"], device_map=options["device_map"], n_devices=options["n_devices"])
    return options


def check_device(args) -> None:
    from ..models import check_device

    check_device(getattr(args, "device", None))


def _check_out(out, *, kind: str | None):
    """``--out`` checked before any work: not empty, not a file, writable, and (for an artifact)
    either new, empty or a previous artifact of the same kind, which is then replaced whole."""
    from ..bank import META_FILE, TENSORS_FILE
    from ..artifacts import check_output_path
    from ..scoring import SCORES_EXTRAS, SCORES_FILE, SCORES_META_FILE

    files = {"bank": (TENSORS_FILE, META_FILE), "scores": (SCORES_FILE, SCORES_META_FILE, *SCORES_EXTRAS)}
    return check_output_path(out, kind=kind, replaces=files.get(kind, ()))


def check_fits_context(model, prompt: str, max_new_tokens: int, *, chat: bool | None = None) -> None:
    """The prompt (as the model reads it) plus the new tokens must fit the model's context, as in collect."""
    from ..generation import format_prompt

    n_prompt = model.to_tokens(format_prompt(model, prompt, chat=chat), truncate=False).shape[1]
    if n_prompt + max_new_tokens > model.cfg.n_ctx:
        raise RealLensError(
            f"the prompt ({n_prompt} tokens) plus --max-new-tokens {max_new_tokens} exceeds the model's context of "
            f"{model.cfg.n_ctx} tokens; shorten the prompt or lower --max-new-tokens to {max(model.cfg.n_ctx - n_prompt, 0)}"
        )


def _limited(task, limit):
    """``task.limit(limit)``, refusing a limit below the first question's size (whole questions only)."""
    if not limit:
        return task
    limited = task.limit(limit)
    if len(limited.examples) > limit:
        raise RealLensError(
            f"--limit {limit} keeps no whole question: the first question has {len(limited.examples)} answers "
            f"(examples), and --limit keeps whole questions only; use --limit {len(limited.examples)} or more"
        )
    return limited


def cmd_hooks(args) -> None:
    from ..inspection import list_hooks
    from ..models import DEFAULT_MODEL, estimate_memory, load_model

    check_device(args)
    options = _model_options(args)
    print(estimate_memory(args.model or DEFAULT_MODEL).describe(load_dtype=args.dtype), flush=True)
    if args.estimate_only:
        return
    print()
    model = load_model(args.model or DEFAULT_MODEL, **options)
    check_fits_context(model, args.prompt, 0, chat=False)
    print(list_hooks(model, prompt=args.prompt, contains=args.filter))


def cmd_collect(args) -> None:
    from ..activations import collect_activations
    from ..locks import output_lock
    from ..tasks import load_task

    check_device(args)
    out = _check_out(args.out, kind="bank") if args.ranks.is_main else None
    # A second command writing the same --out fails now, not after its work (rank 0 writes under torchrun).
    with output_lock(out, wait=False) if out is not None else contextlib.nullcontext():
        task = _limited(load_task(args.task, data_dir=args.data_dir), args.limit)
        model = load_model_for(args)
        state_threads()  # once everything is checked and loaded: a mistake above stays one line
        bank = collect_activations(
            model, task, site=args.site, readout=args.readout, batch_size=args.batch_size,
            chunk_size=args.chunk_size, dtype=args.bank_dtype, shard=True, progress=args.ranks.is_main and not args.quiet,
        )
        if args.ranks.is_main:
            bank.save(out)
    if args.ranks.is_main:
        print(f"wrote {args.out}: {len(bank.examples)} examples, {len(set(bank.groups))} questions, "
              f"acts {list(bank.acts.shape)} {args.bank_dtype} at {bank.meta['hook']} (readout {args.readout})"
              + _ranks_note(args.ranks))


def cmd_generate(args) -> None:
    from ..generation import generate_text

    check_device(args)
    model = load_model_for(args)
    chat = False if args.raw_prompt else None
    check_fits_context(model, args.prompt, args.max_new_tokens, chat=chat)
    print(generate_text(model, args.prompt, max_new_tokens=args.max_new_tokens, chat=chat))


def _bank_for(args, model=None):
    from ..activations import collect_activations
    from ..bank import ActivationBank
    from ..tasks import load_task

    if args.bank:
        return ActivationBank.load(args.bank, allow_unverified=args.allow_unverified)
    if not getattr(args, "task", None):
        raise RealLensError("give --bank DIR (from `real-lens collect`) or --task T to collect first")
    task = _limited(load_task(args.task, data_dir=args.data_dir), args.limit)
    return collect_activations(
        model or load_model_for(args), task, chunk_size=args.chunk_size, dtype=args.bank_dtype, shard=True,
        progress=args.ranks.is_main and not args.quiet,
    )


def _ranks_note(ranks) -> str:
    return f" ({ranks.world_size} processes)" if ranks.is_distributed else ""


def cmd_score(args) -> None:
    from pathlib import Path

    from ..distributed import is_sharded, score_distributed
    from ..locks import output_lock
    from ..plotting import plot_score_heatmap
    from ..provenance import check_same_model, with_source
    from ..scoring import scorer_spec

    if args.from_published:
        return _score_from_published(args)
    is_sharded(args.method, args.ranks)  # unknown or unshardable methods fail before any loading
    pair_options = _pair_options(args)  # pair flags for a method without pairs, or bad values, fail now too
    check_device(args)
    out = _check_out(args.out, kind="scores") if args.ranks.is_main else None
    spec = scorer_spec(args.method)
    needs_model = spec.needs_model
    with output_lock(out, wait=False) if out is not None else contextlib.nullcontext():
        if args.bank:
            bank = _bank_for(args)
            if args.model is None:  # the bank's metadata names the model it came from
                args.model = recorded_model_name(bank.meta)
            model = load_model_for(args) if needs_model else None
            if model is not None:
                check_same_model(bank.meta.get("model"), model, what=f"the bank {args.bank}",
                                 fix="score it with that model (omit --model), or collect a bank with this one")
        else:
            model = load_model_for(args)
            bank = _bank_for(args, model)
        extra = {"progress": args.ranks.is_main and not args.quiet} if spec.progress else {}
        state_threads()  # once everything is checked and loaded: a mistake above stays one line
        scores = score_distributed(args.method, bank, model=model, seed=args.seed, device=args.device,
                                   ranks=args.ranks, **extra, **pair_options)
        if not args.ranks.is_main:
            return
        scores = with_source(scores, bank)
        scores.meta["n_tied_at_top"] = scores.n_tied_at_top
        if args.bank:
            scores.meta["bank"] = str(Path(args.bank).resolve())
        scores.save(out)
        png = plot_score_heatmap(scores, out / "heatmap.png")
    flat, n_heads = scores.scores.flatten(), scores.scores.shape[1] if scores.scores.ndim == 2 else 1
    top = scores.ranking()[:10]
    print(f"wrote {args.out} and {png}{_ranks_note(args.ranks)}; top modules by {args.method}: "
          + ", ".join(f"{hooks.module_label(layer, head)} ({float(flat[layer * n_heads + (head or 0)]):.3f})"
                      for layer, head in top))
    if scores.n_tied_at_top > 1:
        print(f"{scores.n_tied_at_top} modules share the top score; ties are ordered by "
              f"{scores.tie_break or 'module index'} (a larger task separates them)")
    if isinstance(scores.meta.get("heldout"), dict):
        held = scores.meta["heldout"]
        print(f"the AUCs rest on {held['n_questions']} held-out questions ({held['n_examples']} examples)")
    if "pairs" in scores.meta:
        info = scores.meta["pairs"]
        if "n_kept" in info:  # patching and attribution: the clean-corrupted gaps normalise the effects
            print(f"contrast pairs: {info['n_built']} built, {info['n_kept']} kept (|gap| >= {info['min_gap_nats']:g} "
                  f"nats), mean gap {info['mean_gap_nats']:.3f} nats; skipped: {info['skipped'] or 'none'}")
        else:  # direction-attribution: one context, no gap
            print(f"contrast pairs: {info['n_built']} built, metric read on the {info['context']} context (mean "
                  f"{info['mean_metric_nats']:.3f} nats); skipped: {info['skipped'] or 'none'}")


def _score_from_published(args) -> None:
    """``score --from-published FILE``: a release ranking saved as real-published scores (nothing is scored)."""
    from pathlib import Path

    from ..locks import output_lock
    from ..plotting import plot_score_heatmap
    from ..provenance import with_source
    from ..scoring.published import METHOD, load_published_ranking

    given = [flag for flag, value in (("--task", args.task), ("--limit", args.limit)) if value is not None]
    if args.method != "real" or given:
        raise RealLensError(f"--from-published reads its scores from the file; drop {', '.join(given) or '--method'} "
                            "(give --bank DIR to steer with them later, or --model to check the ranking's shape)")
    if not args.ranks.is_main:
        return
    out = _check_out(args.out, kind="scores")
    with output_lock(out, wait=False):
        bank = None
        if args.bank:
            from ..bank import ActivationBank

            bank = ActivationBank.load(args.bank)
        scores = load_published_ranking(args.from_published, model=None if bank is not None else args.model, bank=bank)
        if bank is not None:
            scores = with_source(scores, bank)
            scores.meta["bank"] = str(Path(args.bank).resolve())
        elif args.model:
            scores.meta["model"] = {"name": args.model}
        scores.save(out)
        png = plot_score_heatmap(scores, out / "heatmap.png")
    flat, n_heads = scores.scores.flatten(), scores.scores.shape[1]
    print(f"wrote {args.out} and {png}: {scores.n_modules} heads ({scores.scores.shape[0]} layers x {n_heads}) from "
          f"{Path(args.from_published).name} as {METHOD}; top heads: "
          + ", ".join(f"{hooks.module_label(layer, head)} ({float(flat[layer * n_heads + head]):.3f})"
                      for layer, head in scores.ranking()[:10]))
    if not (bank is not None or args.model):
        print("not checked against a model: pass --bank DIR (needed to steer) or --model NAME to check its shape")


def cmd_compare(args) -> None:
    from pathlib import Path

    from ..compare import compare_scores
    from ..scoring import ModuleScores
    from ..scoring.published import load_published_ranking

    if len(args.scores) != 2:
        raise RealLensError(f"compare takes --scores twice (two score sets); got {len(args.scores)}")
    loaded = [load_published_ranking(p) if Path(p).is_file() else ModuleScores.load(p) for p in args.scores]
    result = compare_scores(*loaded, k=min(args.k, loaded[0].n_modules))
    names = [f"{s.method} ({Path(p).name})" for s, p in zip(loaded, args.scores)]
    print(f"{names[0]} vs {names[1]} over {result['n_modules']} modules: Spearman {result['spearman']:.3f}; "
          f"top-{result['k']} overlap {result['overlap_top_k']} (Jaccard {result['jaccard_top_k']:.3f})")


def _pair_options(args) -> dict:
    """``{"cfg": ...}`` for the contrast-pair scorers from the pair flags; {} when none is given.

    A flag applies when the method's config has that field (patching and attribution take all four,
    direction-attribution ``--n-pairs`` and ``--n-demos``)."""
    given = {k: getattr(args, k) for k in ("n_pairs", "n_demos", "min_gap", "positions") if getattr(args, k) is not None}
    if not given:
        return {}
    import dataclasses

    from ..scoring import scorer_spec

    spec = scorer_spec(args.method)
    fields = {f.name for f in dataclasses.fields(spec.config)} if spec.config is not None else set()
    unused = [k for k in given if k not in fields]
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise RealLensError(f"{flags} apply to the contrast-pair methods (patching and attribution; direction-attribution "
                            f"takes --n-pairs and --n-demos only), not {args.method!r}; drop them")
    return {"cfg": spec.config(**given)}


def recorded_model_name(meta: dict) -> str | None:
    """The name of the model a bank/scores/steering came from, from its metadata (None if unrecorded)."""
    recorded = meta.get("model")
    return recorded.get("name") if isinstance(recorded, dict) else recorded


def _grid(text, cast):
    if text is None:
        return None
    try:
        values = tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise RealLensError(f"could not read the grid {text!r}; expected comma-separated numbers like 8,24") from None
    if cast is float and not all(math.isfinite(v) for v in values):
        raise RealLensError(f"the grid {text!r} holds a value that is not a finite number; expected e.g. 5,15")
    return values


def _check_run_out(out):
    """A run directory: new, empty, or an earlier run's (it holds config.json) — never a folder of other files."""
    path = _check_out(out, kind=None)
    if path.is_dir() and any(path.iterdir()) and not (path / "config.json").exists():
        raise RealLensError(
            f"--out {path} already holds files and no real-lens config.json, so it is not a run directory; "
            "pass a new or empty directory (or an earlier run's, to resume it)"
        )
    return path


def cmd_run(args) -> None:
    from ..experiment import PRESETS, ExperimentConfig, load_config, run_experiment, task_slug

    check_device(args)
    preset = "quick" if args.quick else "larger" if args.larger else "full" if args.full else None
    if args.config and preset:
        raise RealLensError(f"--config and --{preset} both set the whole configuration; give one (options may "
                            "follow --config to change single fields)")
    base = _field_values(load_config(args.config)) if args.config else dict(PRESETS.get(preset, {}))
    overrides = read_overrides(args, ExperimentConfig)
    if "device" in overrides:  # the configuration keeps --device as typed (it is in the cells' digests)
        overrides["device"] = args.given_device
    cfg = ExperimentConfig(**{**base, **overrides})
    default_out = f"runs/{task_slug(cfg.task)}" + (f"-{preset}" if preset else "")  # a preset never meets the default run
    out = run_experiment(cfg, _check_run_out(args.out if args.out is not None else default_out), progress=not args.quiet,
                         **_rank_device(args))
    if args.ranks.is_main:
        print((out / "summary.md").read_text())
        print(f"outputs in {out}" + _ranks_note(args.ranks))


def _rank_device(args) -> dict:
    """Under torchrun, ``{"device": this rank's device}`` (cuda:LOCAL_RANK on a GPU node); one process: {}."""
    return {"device": args.rank_device} if args.ranks.is_distributed else {}


def _field_values(cfg) -> dict:
    """A dataclass's field values, not recursed into (``dataclasses.asdict`` would turn nested configs into dicts)."""
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def cmd_transfer(args) -> None:
    from ..experiment import TransferConfig, load_source_run, run_transfer, task_slug

    source_cfg, _ = load_source_run(args.source_run)
    tcfg = TransferConfig(args.source_run, args.task, methods=_grid(args.methods, str),
                          n_test_questions=args.test_questions, questions_per_part=args.questions_per_part)
    out = args.out if args.out is not None else f"runs/transfer-{task_slug(source_cfg.task)}-to-{task_slug(args.task)}"
    out = run_transfer(tcfg, _check_run_out(out), progress=not args.quiet, **_rank_device(args))
    if args.ranks.is_main:
        print((out / "summary.md").read_text())
        print(f"outputs in {out}" + _ranks_note(args.ranks))


def cmd_diagnose(args) -> None:
    from ..experiment import DiagnoseConfig, run_diagnose

    check_device(args)
    dcfg = DiagnoseConfig(args.run_dir, folds=None if args.fold is None else (args.fold,),
                          methods=_grid(args.methods, str), k=args.k, dose_kl=args.dose_kl)
    out = run_diagnose(dcfg, progress=not args.quiet, device=args.device)
    print((out / "heads.md").read_text())
    print(f"outputs in {out}")


def cmd_tasks(args) -> None:
    from ..tasks import TASK_DESCRIPTIONS
    from ..tasks.data import resolve_data_dir

    root = resolve_data_dir(args.data_dir)
    where = str(root) if root else "the Hugging Face Hub (no local data folder found)"
    width = max(map(len, TASK_DESCRIPTIONS))
    for name, description in TASK_DESCRIPTIONS.items():
        print(f"{name:{width}s}  {description}")
    print(f"\ndata from: {where}")


