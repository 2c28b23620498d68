"""Do real-lens's TruthfulQA MC1/MC2 agree with EleutherAI's lm-evaluation-harness on the same model,
prompt and questions? (issue 11 §1)

The harness's ``truthfulqa_mc1`` / ``truthfulqa_mc2`` tasks put each question in TruthfulQA's "qa"
preset (six demonstrations, then ``\\n\\nQ: {question}\\nA:``) and score each choice as the
continuation ``" " + choice`` (its default target delimiter), which is real-lens's ``qa`` MC prompt
style (METHOD.md §6a). Here the harness runs its own task configs, unchanged except for where the
data comes from (no Hub here: the same questions as a local JSONL in the Hub's
``truthful_qa``/multiple_choice schema, written to a temporary folder), on the same float weights
real-lens loads (the dequantised SmolLM2 directory), through its own ``HFLM``. Prompt construction,
tokenisation, log-likelihoods and the MC1/MC2 arithmetic all come from the harness; we only compare.

Two token settings, each compared like for like:
  - ``no-bos``: the harness as shipped (for this tokenizer it prepends no BOS) vs real-lens with
    ``model.cfg.default_prepend_bos = False``;
  - ``bos``: the harness with ``add_bos_token=True`` vs real-lens as it runs (TransformerLens prepends
    BOS ``<|im_start|>``).
The harness as shipped vs real-lens as it runs is reported too (the cross pair), and real-lens's
``instruction-qa`` and ``plain`` means on the same questions (no harness counterpart).

The harness lives in its own venv (its pins must not touch the project's), so this script runs
in two interpreters: the project venv runs ``main`` and calls the harness venv's python on this
same file with ``--harness-request`` (then only the standard library, numpy and lm_eval are
imported). Every unit of work (a harness call on a few questions, a real-lens setting on a few
questions) is cached in ``runs/analyses/crosscheck_lm_eval``, so a run cut short resumes.

Setup and run (from the repository root)::

    python3 -m venv /work/lmeval-venv
    /work/lmeval-venv/bin/pip install torch==2.13.0           # first, so pip keeps the CPU build
    /work/lmeval-venv/bin/pip install "lm-eval[hf]==0.4.13" "transformers>=5.9,<5.24"
    OMP_NUM_THREADS=2 .venv/bin/python -m analyses.crosscheck_lm_eval --lm-eval-python /work/lmeval-venv/bin/python

Measured under load (2 CPU cores shared by several jobs), 24 questions: the harness ~35 s per question
and BOS setting (it reads the ~220 prompt tokens once per choice; 29 min for both settings), real-lens
~6 s per question and style (the demonstrations run once). To keep each job short, add
``--max-units N`` (compute at most N uncached units, then stop; a harness unit of 6 questions took
~4 min, a real-lens unit ~40 s) and repeat the command until it writes the results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NAME = "crosscheck_lm_eval"
HARNESS_FLAG = "--harness-request"
# (our setting name, lm-eval HFLM add_bos_token, real-lens default_prepend_bos) for each like-for-like pair
TOKEN_SETTINGS = {"no-bos": (None, False), "bos": (True, True)}
OTHER_STYLES = ("instruction-qa", "plain")  # real-lens only: the harness has no counterpart


@dataclass(frozen=True)
class Config:
    n_questions: int = 24  # the first n test questions of the fold, in the task's order
    fold: int = 0
    questions_per_call: int = 6  # questions per cached unit of work (a harness call, a real-lens evaluation)
    harness_batch_size: int = 4  # HFLM batch_size
    model: str = "smollm2-135m-instruct"  # a real-lens model name whose weights are a local HF directory

    def __post_init__(self):
        for field in ("n_questions", "questions_per_call", "harness_batch_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"Config.{field} must be at least 1; got {getattr(self, field)}")
        if self.fold not in (0, 1):
            raise ValueError(f"Config.fold must be 0 or 1 (TruthfulQA has two folds); got {self.fold}")


CONFIG = Config()
QUICK = Config(n_questions=2, questions_per_call=2)  # a smoke run: minutes, and it needs the harness venv


# --------------------------------------------------------------------------- pure helpers
def build_hub_records(questions) -> list[dict]:
    """``MCQuestion``s as rows of the Hub's ``truthful_qa``/multiple_choice (what the harness reads).

    The harness's tasks take choice 0 as MC1's answer (``doc_to_target: 0``), as on the Hub; a
    question whose MC1 targets do not start with their one true answer would be scored wrongly.
    """
    records = []
    for q in questions:
        if list(q.mc1_labels[:1]) != [1] or sum(q.mc1_labels) != 1:
            raise ValueError(
                f"MC1 targets must list their one true answer first (the harness scores choice 0 as MC1's "
                f"answer); found labels {list(q.mc1_labels)} for {q.question!r}"
            )
        records.append({
            "question": q.question,
            "mc1_targets": {"choices": list(q.mc1_answers), "labels": [int(v) for v in q.mc1_labels]},
            "mc2_targets": {"choices": list(q.mc2_answers), "labels": [int(v) for v in q.mc2_labels]},
        })
    return records


def summarise_agreement(ours_mc1, ours_mc2, theirs_mc1, theirs_mc2, *, tolerance: float = 1e-4) -> dict:
    """Per-question agreement of two MC1/MC2 score lists (same question order).

    ``mc2_differs`` lists the questions whose |ΔMC2| exceeds ``tolerance``; ``mc1_differs`` those whose MC1 differs.
    MC2 near 0 or 1 hides log-likelihood differences, so ``max_abs_dlogit_mc2`` also compares
    log(MC2 / (1 − MC2)) = logsumexp(true) − logsumexp(false), with MC2 clipped to [1e-300, 1 − 1e-15].
    """
    a1, a2, b1, b2 = (np.asarray(v, dtype=float) for v in (ours_mc1, ours_mc2, theirs_mc1, theirs_mc2))
    if not len(a1) == len(a2) == len(b1) == len(b2) or len(a1) == 0:
        raise ValueError(
            f"summarise_agreement needs four non-empty score lists of one length; found lengths "
            f"{len(a1)}, {len(a2)}, {len(b1)}, {len(b2)}"
        )
    d2 = np.abs(a2 - b2)
    return {
        "n": len(a1),
        "mc1_equal": int((a1 == b1).sum()),
        "mc1_differs": [int(i) for i in np.flatnonzero(a1 != b1)],
        "max_abs_dmc2": float(d2.max()),
        "mean_abs_dmc2": float(d2.mean()),
        "max_abs_dlogit_mc2": float(np.abs(mc2_logit(a2) - mc2_logit(b2)).max()),
        "mc2_differs": [int(i) for i in np.flatnonzero(d2 > tolerance)],
        "mc1_mean": [float(a1.mean()), float(b1.mean())],
        "mc2_mean": [float(a2.mean()), float(b2.mean())],
    }


def mc2_logit(mc2):
    """log(MC2 / (1 − MC2)), MC2 clipped to [1e-300, 1 − 1e-15] so that 0 and 1 stay finite."""
    mc2 = np.asarray(mc2, dtype=float)
    return np.log(np.clip(mc2, 1e-300, None)) - np.log(np.clip(1 - mc2, 1e-15, None))


def count_mc1_ties(logliks_mc1) -> int:
    """Questions whose true answer (choice 0) ties the best false one: the harness's argmax counts
    such a tie as right (the first maximum is choice 0), real-lens's MC1 counts it as wrong."""
    return sum(1 for ll in logliks_mc1 if ll[0] == max(ll[1:]))


def chunk(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the harness side
def run_harness(request_path: str) -> None:
    """In the lm-eval venv: score the request's questions with the harness's own TruthfulQA tasks.

    Request: ``{"records", "model_dir", "add_bos_token", "batch_size", "out"}``. Writes per question
    the harness's context, log-likelihoods, MC1/MC2 (``acc`` of each task, i.e. its own
    ``process_results``), and how it tokenised each (context, continuation) pair (``_encode_pair``,
    the method its ``loglikelihood`` calls).
    """
    import lm_eval
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    request = json.loads(Path(request_path).read_text())
    task_dir = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa"
    with tempfile.TemporaryDirectory(prefix="crosscheck-lm-eval-") as tmp:
        data_file = Path(tmp) / "truthfulqa_mc.jsonl"
        data_file.write_text("".join(json.dumps(r) + "\n" for r in request["records"]))
        names = {}
        for metric in ("mc1", "mc2"):
            # The installed task config, included whole; only the data source changes. (JSON is YAML.)
            names[metric] = f"crosscheck_truthfulqa_{metric}"
            (Path(tmp) / f"{names[metric]}.yaml").write_text(json.dumps({
                "include": str(task_dir / f"truthfulqa_{metric}.yaml"),
                "task": names[metric],
                "dataset_path": "json",
                "dataset_name": None,
                "dataset_kwargs": {"data_files": {"validation": str(data_file)}},
            }))
        manager = TaskManager(include_path=tmp, include_defaults=False)
        lm = HFLM(pretrained=request["model_dir"], dtype="float32", device="cpu",
                  batch_size=request["batch_size"], add_bos_token=request["add_bos_token"])
        started = time.perf_counter()
        results = lm_eval.simple_evaluate(model=lm, tasks=list(names.values()), task_manager=manager,
                                          log_samples=True, bootstrap_iters=0)
        seconds = time.perf_counter() - started
    per_question = {}
    for metric, task in names.items():
        for sample in results["samples"][task]:
            row = per_question.setdefault(sample["doc"]["question"], {"question": sample["doc"]["question"]})
            contexts = {context for context, _ in sample["arguments"]}
            if len(contexts) != 1:
                raise RuntimeError(f"the harness gave one question {len(contexts)} contexts; expected one")
            row["context"] = contexts.pop()
            row[f"continuations_{metric}"] = [continuation for _, continuation in sample["arguments"]]
            row[f"ll_{metric}"] = [float(ll) for ll, _ in sample["filtered_resps"]]
            row[metric] = float(sample["acc"])
    for row in per_question.values():
        encoded = {c: lm._encode_pair(row["context"], c) for c in row["continuations_mc2"] + row["continuations_mc1"]}
        row["context_tokens"] = list(next(iter(encoded.values()))[0])
        row["continuation_tokens"] = {c: list(cont) for c, (_, cont) in encoded.items()}
        # BPE merging across the context/continuation boundary: the harness's joint encoding would
        # then cut the continuation at the context's length in tokens (real-lens scores those differently).
        row["boundary_merges"] = sum(
            lm.tok_encode(row["context"] + c)[:len(row["context_tokens"])] != row["context_tokens"] for c in encoded)
    Path(request["out"]).write_text(json.dumps({
        "versions": {"lm_eval": lm_eval.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__},
        "add_bos_token": request["add_bos_token"],
        "seconds": seconds,
        "questions": [per_question[r["question"]] for r in request["records"]],
    }))


# --------------------------------------------------------------------------- the project side
def call_harness(python: str, records: list[dict], *, model_dir: str, add_bos_token, batch_size: int, out: Path) -> dict:
    from real_lens.errors import RealLensError
    from real_lens.io import read_json, write_json

    with tempfile.TemporaryDirectory(prefix="crosscheck-lm-eval-") as tmp:
        request = Path(tmp) / "request.json"
        result = Path(tmp) / "result.json"
        request.write_text(json.dumps({"records": records, "model_dir": model_dir, "add_bos_token": add_bos_token,
                                       "batch_size": batch_size, "out": str(result)}))
        try:
            proc = subprocess.run([python, str(Path(__file__).resolve()), HARNESS_FLAG, str(request)],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            raise RealLensError(f"--lm-eval-python {python} does not exist; make the harness venv as this "
                                "script's docstring says and pass its bin/python") from None
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise RealLensError(f"the harness run failed (exit {proc.returncode}); its last lines:\n{tail}")
        data = read_json(result)
    write_json(out, data)
    return data


@contextlib.contextmanager
def bos_setting(model, prepend_bos: bool):
    """TransformerLens's own switch, ``model.cfg.default_prepend_bos`` (what ``to_tokens`` reads), restored after."""
    before = model.cfg.default_prepend_bos
    model.cfg.default_prepend_bos = prepend_bos
    try:
        yield model
    finally:
        model.cfg.default_prepend_bos = before


def evaluate_real_lens(model, questions, *, style: str, prepend_bos: bool, mc_prompts) -> dict:
    """real-lens MC1/MC2 of ``questions`` under one prompt style and BOS setting."""
    from real_lens.evaluation.truthfulqa import evaluate_truthfulqa

    with bos_setting(model, prepend_bos):
        started = time.perf_counter()
        result = evaluate_truthfulqa(model, questions, mc_prompt=mc_prompts[style], progress=False)
        seconds = time.perf_counter() - started
    return {"questions": list(result.questions), "mc1": result.mc1.tolist(), "mc2": result.mc2.tolist(),
            "seconds": seconds}


def check_same_inputs(model, questions, harness: list[dict], *, prompt, prepend_bos: bool) -> dict:
    """Do the harness and real-lens read the same text and the same tokens?

    Text: the harness's context must be real-lens's ``qa`` prompt and each continuation ``" " + answer``.
    Tokens: real-lens's prompt tokens vs the harness's context tokens, and real-lens's answer tokens
    (those of prompt + answer from where the two tokenisations differ) vs the harness's continuation tokens.
    """
    from real_lens.tokens import tokenize
    from real_lens.evaluation.truthfulqa import answer_start
    from real_lens.tasks.truthfulqa import ANSWER_FORMAT

    counts = {"contexts_equal": 0, "continuations_equal": 0, "context_tokens_equal": 0,
              "continuation_tokens_equal": 0, "n_continuations": 0, "boundary_merges": 0}
    with bos_setting(model, prepend_bos):
        for q, row in zip(questions, harness):
            text = prompt.format(q.question)
            counts["contexts_equal"] += row["context"] == text
            prompt_tokens = tokenize(model, text)
            counts["context_tokens_equal"] += prompt_tokens.tolist() == row["context_tokens"]
            answers = list(dict.fromkeys(q.mc2_answers + q.mc1_answers))
            expected = [ANSWER_FORMAT.format(answer=a) for a in answers]
            given = list(dict.fromkeys(row["continuations_mc2"] + row["continuations_mc1"]))
            counts["continuations_equal"] += sum(e == g for e, g in zip(expected, given))
            counts["n_continuations"] += len(expected)
            for continuation in given:
                full = tokenize(model, text + continuation)
                ours = full[answer_start(prompt_tokens, full):].tolist()
                counts["continuation_tokens_equal"] += ours == row["continuation_tokens"][continuation]
            counts["boundary_merges"] += row["boundary_merges"]
    counts["n_questions"] = len(questions)
    return counts


@dataclass(frozen=True)
class Inputs:
    """What both sides read: the questions (in units of ``questions_per_call``), prompts and model."""

    questions: list
    chunks: list[list]
    mc_prompts: dict
    model: object
    model_dir: str


def prepare(cfg: Config) -> Inputs:
    from real_lens.evaluation.truthfulqa import select_mc_questions
    from real_lens.models import load_model
    from real_lens.tasks import load_task

    task = load_task("truthfulqa")
    questions = select_mc_questions(task, task.folds[cfg.fold].test)[:cfg.n_questions]
    if len(questions) < cfg.n_questions:
        raise ValueError(f"fold {cfg.fold} has {len(questions)} test questions; Config.n_questions asks for {cfg.n_questions}")
    model = load_model(cfg.model)
    model_dir = str(model.original_model.config._name_or_path)
    if not (Path(model_dir) / "config.json").is_file():
        raise ValueError(f"model {cfg.model!r} was not loaded from a local HF directory ({model_dir!r}); "
                         "the harness needs one (use the embedded model or a local directory)")
    return Inputs(questions, chunk(questions, cfg.questions_per_call), task.eval_data["mc_prompts"], model, model_dir)


def list_units(inputs: Inputs) -> list[tuple[str, str, int]]:
    """(side, setting, chunk index) of every unit of work: harness per BOS setting, real-lens per style/BOS."""
    n = range(len(inputs.chunks))
    return ([("harness", s, i) for s in TOKEN_SETTINGS for i in n]
            + [("real-lens", f"qa/{s}", i) for s in TOKEN_SETTINGS for i in n]
            + [("real-lens", f"{style}/bos", i) for style in OTHER_STYLES for i in n])


def unit_path(cfg: Config, inputs: Inputs, work: Path, unit: tuple[str, str, int]) -> Path:
    side, setting, i = unit
    key = digest([side, setting, cfg.model, [q.question for q in inputs.chunks[i]], cfg.harness_batch_size])
    return work / f"{side}-{setting.replace('/', '-')}-{i}-{key}.json"


def run_units(cfg: Config, inputs: Inputs, *, lm_eval_python: str, work: Path, max_units: int | None,
              progress: bool) -> int:
    """Compute (and cache in ``work``) up to ``max_units`` units not yet cached; how many are left."""
    from tqdm.auto import tqdm

    from real_lens.io import write_json

    todo = [u for u in list_units(inputs) if not unit_path(cfg, inputs, work, u).is_file()]
    run = todo if max_units is None else todo[:max_units]
    for unit in tqdm(run, desc=NAME, disable=not progress):
        side, setting, i = unit
        path = unit_path(cfg, inputs, work, unit)
        if side == "harness":
            call_harness(lm_eval_python, build_hub_records(inputs.chunks[i]), model_dir=inputs.model_dir,
                         add_bos_token=TOKEN_SETTINGS[setting][0], batch_size=cfg.harness_batch_size, out=path)
        else:
            style, bos = setting.split("/")
            write_json(path, evaluate_real_lens(inputs.model, inputs.chunks[i], style=style,
                                                prepend_bos=bos == "bos", mc_prompts=inputs.mc_prompts))
    return len(todo) - len(run)


def compute(cfg: Config, inputs: Inputs, *, work: Path) -> dict:
    """The comparison from the cached units (all of them must be there: :func:`run_units`)."""
    from real_lens.evaluation.truthfulqa import score_mc2
    from real_lens.io import read_json

    questions, model, mc_prompts = inputs.questions, inputs.model, inputs.mc_prompts
    n_chunks = len(inputs.chunks)

    def gather(side, setting):
        rows = [read_json(unit_path(cfg, inputs, work, (side, setting, i))) for i in range(n_chunks)]
        if side == "harness":
            return [q for r in rows for q in r["questions"]], sum(r["seconds"] for r in rows)
        return {k: [v for r in rows for v in r[k]] for k in ("questions", "mc1", "mc2")}, sum(r["seconds"] for r in rows)

    texts = [q.question for q in questions]
    harness, real, seconds = {}, {}, {}
    for setting in TOKEN_SETTINGS:
        harness[setting], seconds[f"harness {setting}"] = gather("harness", setting)
        if [row["question"] for row in harness[setting]] != texts:
            raise RuntimeError("the harness's questions do not match ours by text")
    for setting in [f"qa/{s}" for s in TOKEN_SETTINGS] + [f"{s}/bos" for s in OTHER_STYLES]:
        real[setting], seconds[f"real-lens {setting}"] = gather("real-lens", setting)
        if real[setting]["questions"] != texts:
            raise RuntimeError("real-lens's questions are not in the order asked")

    def theirs(setting, metric):
        return [row[metric] for row in harness[setting]]

    comparisons = {}
    for name, ours, other in (("no-bos", "qa/no-bos", "no-bos"), ("bos", "qa/bos", "bos"),
                              ("as shipped", "qa/bos", "no-bos")):
        comparisons[name] = {
            "real_lens": ours, "harness": other,
            **summarise_agreement(real[ours]["mc1"], real[ours]["mc2"], theirs(other, "mc1"), theirs(other, "mc2")),
        }
    same_inputs = {s: check_same_inputs(model, questions, harness[s], prompt=mc_prompts["qa"], prepend_bos=bos)
              for s, (_, bos) in TOKEN_SETTINGS.items()}
    # The MC2 arithmetic alone: real-lens's score_mc2 on the harness's own log-likelihoods.
    arithmetic = {}
    for s in TOKEN_SETTINGS:
        ours = [score_mc2([ll for ll, y in zip(row["ll_mc2"], q.mc2_labels) if y == 1],
                          [ll for ll, y in zip(row["ll_mc2"], q.mc2_labels) if y == 0])
                for q, row in zip(questions, harness[s])]
        arithmetic[s] = float(np.max(np.abs(np.array(ours) - theirs(s, "mc2"))))
    return {
        "n_questions": len(questions),
        "versions": read_json(unit_path(cfg, inputs, work, ("harness", "bos", 0)))["versions"],
        "model_dir": Path(inputs.model_dir).name,
        "comparisons": comparisons,
        "inputs": same_inputs,
        "mc2_arithmetic_max_abs_diff": arithmetic,
        "mc1_ties_in_harness": {s: count_mc1_ties(theirs(s, "ll_mc1")) for s in TOKEN_SETTINGS},
        "real_lens_means": {s: {"mc1": float(np.mean(v["mc1"])), "mc2": float(np.mean(v["mc2"]))} for s, v in real.items()},
        "seconds_under_load": seconds,
        "per_question": [
            {"index": k,  # position among the fold's test questions (task order); texts stay in the data folder
             **{f"harness {s} {m}": harness[s][k][m] for s in TOKEN_SETTINGS for m in ("mc1", "mc2")},
             **{f"real-lens {s} {m}": real[s][m][k] for s in real for m in ("mc1", "mc2")}}
            for k in range(len(questions))
        ],
    }


def table(data: dict) -> list[str]:
    cfg = data["config"]
    lines = [
        f"# real-lens vs lm-evaluation-harness: TruthfulQA MC1/MC2, {data['n_questions']} questions",
        "",
        f"The first {data['n_questions']} test questions of fold {cfg['fold']}, model {cfg['model']} "
        f"(float32, CPU), the \"qa\" preset prompt; lm-eval {data['versions']['lm_eval']}, "
        f"transformers {data['versions']['transformers']}, torch {data['versions']['torch']}.",
        "",
        "| pair (real-lens vs harness) | MC1 equal | max abs ΔMC2 | mean abs ΔMC2 | max abs Δlogit(MC2) "
        "| MC1 real-lens / harness | MC2 real-lens / harness |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in data["comparisons"].items():
        lines.append(
            f"| {name}: real-lens {c['real_lens']} vs harness {c['harness']} | {c['mc1_equal']}/{c['n']} "
            f"| {c['max_abs_dmc2']:.2e} | {c['mean_abs_dmc2']:.2e} | {c['max_abs_dlogit_mc2']:.2e} "
            f"| {c['mc1_mean'][0]:.4f} / {c['mc1_mean'][1]:.4f} | {c['mc2_mean'][0]:.4f} / {c['mc2_mean'][1]:.4f} |"
        )
    for name, c in data["comparisons"].items():
        differ = sorted(set(c["mc1_differs"]) | set(c["mc2_differs"]))
        if differ:
            lines += ["", f"Questions that differ in \"{name}\" (MC1 differs, or abs ΔMC2 > 1e-4): MC1 and MC2, "
                      "real-lens → harness", ""]
            for k in differ:
                row = data["per_question"][k]
                ours, theirs = f"real-lens {c['real_lens']}", f"harness {c['harness']}"
                lines.append(f"- question {k}: MC1 {row[ours + ' mc1']:.0f} → {row[theirs + ' mc1']:.0f}, MC2 "
                             f"{row[ours + ' mc2']:.4f} → {row[theirs + ' mc2']:.4f}")
    lines += ["", "How each side tokenises: the harness (HFLM._encode_pair) encodes context + continuation jointly "
              "and cuts the continuation at the context's length in tokens; real-lens cuts where the tokenisations "
              "of prompt and prompt + answer first differ. With add_bos_token unset the harness prepends no BOS for "
              "this tokenizer (its encode adds none); TransformerLens prepends BOS <|im_start|>. Both score "
              "each answer as the sum of its tokens' log-probs, the harness in float32 (sdpa attention), real-lens "
              "summing in float64 (eager attention, the demonstrations' KV cache shared).",
              "", "Same inputs? (per BOS setting: exact string and token-id equality)", "",
              "| setting | contexts | continuations | context tokens | continuation tokens | boundary merges |",
              "| --- | --- | --- | --- | --- | --- |"]
    for s, c in data["inputs"].items():
        lines.append(f"| {s} | {c['contexts_equal']}/{c['n_questions']} | {c['continuations_equal']}/{c['n_continuations']} "
                     f"| {c['context_tokens_equal']}/{c['n_questions']} "
                     f"| {c['continuation_tokens_equal']}/{c['n_continuations']} | {c['boundary_merges']} |")
    lines += ["", "MC2 arithmetic alone (real-lens score_mc2 on the harness's log-likelihoods), max abs diff: "
              + ", ".join(f"{s} {v:.1e}" for s, v in data["mc2_arithmetic_max_abs_diff"].items())
              + "; MC1 ties in the harness's log-likelihoods: "
              + ", ".join(f"{s} {v}" for s, v in data["mc1_ties_in_harness"].items()) + ".",
              "", "real-lens means on the same questions:", "", "| prompt/BOS | MC1 | MC2 |", "| --- | --- | --- |"]
    for s, v in data["real_lens_means"].items():
        lines.append(f"| {s} | {v['mc1']:.4f} | {v['mc2']:.4f} |")
    lines += ["", "Wall time under load (2 shared CPU cores; ratios only): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in data["seconds_under_load"].items()) + "."]
    return lines


def main(argv=None) -> dict:
    import argparse

    from analyses.common import RESULTS, ROOT, save
    from real_lens.errors import RealLensError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm-eval-python", required=True, help="the python of a venv with lm-eval installed")
    parser.add_argument("--quick", action="store_true", help="the QUICK configuration (2 questions, minutes)")
    parser.add_argument("--out", default=None, help="results folder (default results/crosscheck_lm_eval, "
                        "or runs/analyses/crosscheck_lm_eval-quick with --quick)")
    parser.add_argument("--max-units", type=int, default=None,
                        help="compute at most this many uncached units of work, then stop (for short jobs)")
    args = parser.parse_args(argv)
    if not Path(args.lm_eval_python).is_file():
        raise RealLensError(f"--lm-eval-python {args.lm_eval_python} does not exist; make the harness venv as "
                            "this script's docstring says and pass its bin/python")
    cfg = QUICK if args.quick else CONFIG
    out = Path(args.out or (ROOT / "runs" / "analyses" / f"{NAME}-quick" if args.quick else RESULTS / NAME))
    work = ROOT / "runs" / "analyses" / (f"{NAME}-quick" if args.quick else NAME) / "cache"
    inputs = prepare(cfg)
    left = run_units(cfg, inputs, lm_eval_python=args.lm_eval_python, work=work, max_units=args.max_units,
                     progress=not args.quick)
    if left:
        print(f"{left} unit(s) of work left (cached so far in {work}); run the same command again")
        return {"units_left": left}
    data = compute(cfg, inputs, work=work)
    save(out, cfg, data, table({"config": dataclasses.asdict(cfg), **data}))
    print("\n".join(table({"config": dataclasses.asdict(cfg), **data})))
    return data


if __name__ == "__main__":
    if sys.argv[1:2] == [HARNESS_FLAG]:
        run_harness(sys.argv[2])  # in the lm-eval venv: nothing of real_lens is imported
    else:
        from analyses.common import run_main

        run_main(main)
