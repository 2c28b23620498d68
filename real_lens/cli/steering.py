"""The commands that use a steering: ``steer``, ``inspect`` and ``export`` (from --scores + bank, or a saved
--steering), at a fixed ``--alpha`` or a calibrated ``--kl-target``."""

from __future__ import annotations

import logging

from .. import hooks
from ..errors import RealLensError
from . import commands
from .commands import DEFAULT_ALPHA, check_device, check_fits_context, recorded_model_name

logger = logging.getLogger(__name__)


def _steering_for(args):
    """``(steering, model)`` from --scores (+ bank) or --steering; the model is checked before any forward pass.

    The model is --model, else the one the scores/steering came from (so a steering never meets
    a model it was not built for by accident)."""
    from ..bank import ActivationBank
    from ..provenance import check_scores_bank
    from ..scoring import ModuleScores
    from ..steering import Steering, build_steering

    check_device(args)
    if getattr(args, "steering", None):
        steering = Steering.load(args.steering, allow_unverified=args.allow_unverified)
        if args.alpha is not None:
            steering = steering.with_alpha(args.alpha)
        recorded = recorded_model_name(steering.meta)
        ties = None
    else:
        scores = ModuleScores.load(args.scores, allow_unverified=args.allow_unverified)
        bank_dir = args.bank or scores.meta.get("bank")
        if not bank_dir:
            raise RealLensError(f"{args.scores} does not record its bank; pass --bank DIR (the bank it was scored on)")
        bank = ActivationBank.load(bank_dir, allow_unverified=args.allow_unverified)
        check_scores_bank(scores, bank, scores_dir=args.scores, bank_dir=bank_dir)
        k = min(args.top_k, scores.n_modules)
        ties = scores.ties_at(k)
        steering = build_steering(bank, scores.select(k, strengths=args.strengths),
                                  alpha=DEFAULT_ALPHA if args.alpha is None else args.alpha)
        recorded = recorded_model_name(scores.meta) or recorded_model_name(bank.meta)
    from_metadata = args.model is None and recorded
    if from_metadata:
        args.model = recorded
    model = commands.load_model_for(args)
    steering.check_model(model)
    if from_metadata:
        logger.info("model %s (recorded in the %s; --model overrides)", recorded,
                    "steering" if getattr(args, "steering", None) else "scores")
    if ties and ties["decided_by_ties"]:  # said once the steering is known to fit the model
        logger.warning("the top %d is decided by ties: %d modules share the score %.4g and only %d fit, chosen by %s",
                       ties["k"], ties["n_tied"], ties["score"], ties["n_inside"], ties["broken_by"])
    if args.kl_target is not None:
        steering = _calibrated(model, steering, args.kl_target, data_dir=args.data_dir)
    return steering, model


def _calibrated(model, steering, kl: float, *, data_dir=None):
    """``steering`` at the α that reaches ``kl`` (the main job's calibration), with one line saying what it got."""
    from ..evaluation.dose import N_CALIBRATION_TEXTS, calibrate

    steering = calibrate(model, steering, kl=kl, data_dir=data_dir)
    c = steering.meta["calibration"]
    print(f"calibrated α {c['alpha']:.4g} for the KL target {kl:g} nats per token on {N_CALIBRATION_TEXTS} held-apart "
          f"WikiText-2 paragraphs: KL {c['kl']:.4g}, "
          + ("target reached" if c["reached"] else f"target NOT reached ({c['reason']}; the closest point evaluated)")
          + f", {c['n_evaluations']} evaluations", flush=True)
    return steering


def cmd_steer(args) -> None:
    from ..generation import generate_text

    steering, model = _steering_for(args)
    chat = False if args.raw_prompt else None
    check_fits_context(model, args.prompt, args.max_new_tokens, chat=chat)
    unsteered = generate_text(model, args.prompt, max_new_tokens=args.max_new_tokens, chat=chat)
    with steering.applied(model):
        steered = generate_text(model, args.prompt, max_new_tokens=args.max_new_tokens, chat=chat)
    strengths = ", ".join(f"{s:.2f}" for s in steering.strengths.tolist()[:8])
    print(f"prompt: {args.prompt}\n\n[unsteered]\n{unsteered}\n\n[steered: {steering.method}, top {len(steering.modules)}, "
          f"alpha {steering.alpha:g}, strengths {args.strengths} ({strengths}{' ...' if len(steering.modules) > 8 else ''})]"
          f"\n{steered}")


def cmd_inspect(args) -> None:
    import warnings

    from ..inspection import LargeSteeringWarning, compare_logits

    steering, model = _steering_for(args)
    with warnings.catch_warnings():  # the description prints its own warning line
        warnings.simplefilter("ignore", LargeSteeringWarning)
        print(steering.describe(model, warn_ratio=args.warn_ratio))
    print()
    print(compare_logits(model, args.prompt, steering, n_tokens=args.n_tokens, positions=args.positions,
                         prompt_length=args.prompt_length))


def _check_export_out(args):
    """``export --out`` checked before any loading, by the rules of every writer: a directory artifact
    (vectors, steering) is new, empty or an earlier one of its kind; an lm-eval file is a .pt/.pth
    path that is not a directory or a symlink."""
    from ..artifacts import check_output_file, check_output_path
    from ..export import LM_EVAL_SUFFIXES, VECTORS_FILES, VECTORS_KIND
    from ..steering import STEERING_FILE, STEERING_KIND, STEERING_META_FILE

    if args.format == "lm-eval":
        return check_output_file(args.out, suffixes=LM_EVAL_SUFFIXES,
                                 what="an lm-evaluation-harness steering file (lm_eval reads .pt or .pth)")
    if args.format == "vectors":
        return check_output_path(args.out, kind=VECTORS_KIND, replaces=VECTORS_FILES)
    return check_output_path(args.out, kind=STEERING_KIND, replaces={STEERING_FILE, STEERING_META_FILE})


def cmd_export(args) -> None:
    from ..export import save_layer_vectors, save_lm_eval_steering
    from ..locks import output_lock

    out = _check_export_out(args)
    with output_lock(out, wait=False):  # a second export into the same --out fails now, not after loading
        steering, model = _steering_for(args)
        if args.format == "lm-eval":
            save_lm_eval_steering(model, steering, out)
        elif args.format == "vectors":
            vectors = save_layer_vectors(model, steering, out)
        else:
            steering.save(out)
    if args.format == "lm-eval":
        print(f"wrote {out}; evaluate any lm-evaluation-harness task under this steering with\n"
              f"  lm_eval --model steered --model_args pretrained={_hub_name(model, steering)},steer_path={out} "
              "--tasks <task>")
    elif args.format == "vectors":
        print(f"wrote {out}: {len(vectors.vectors)} per-layer vectors at {hooks.hook_template(vectors.site)}")
    else:
        print(f"wrote {out}: {len(steering.modules)} modules at {steering.site}, alpha {steering.alpha:g}")


def _hub_name(model, steering) -> str:
    """The model's name for lm_eval's ``pretrained=``: the Hugging Face name the steering records (for the
    embedded model, the Hub model it embeds), else the name the model was loaded by."""
    from ..models import model_identity

    recorded, identity = steering.meta.get("model"), model_identity(model)
    candidates = [*((recorded.get("hf_name"), recorded.get("name")) if isinstance(recorded, dict) else (recorded,)),
                  identity.get("hf_name"), identity.get("name")]
    names = [n for n in candidates if isinstance(n, str) and n]
    return names[0] if names else "<the Hugging Face model>"
