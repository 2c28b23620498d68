"""TruthfulQA MC1 / MC2 (METHOD.md §6), with the prompt's forward pass shared by its answers.

An answer's score is the sum of the log-probs of its tokens given the prompt; the model reads
``prompt + " {answer}"`` (``ANSWER_FORMAT``, as the task's examples). Answer tokens are the
tokens of ``prompt + answer`` beyond the prompt's own tokens. The prompt is the question in one of
the MC prompt styles of METHOD.md §6a (:class:`~real_lens.tasks.truthfulqa.MCPrompt`; default
``instruction-qa``, the REAL release's: instruction, the six "qa" demonstrations, ``Q: …\nA:``).

Shared demonstrations: a style's prefix (instruction + demonstrations) is the same for every
question, so it runs ONCE per call, and its KV cache is copied under every question of every
batch. The shared part is the longest run of prefix tokens that begins the tokenisation of every
question's full prompt, so each question still reads exactly the tokens of its own full prompt
(BPE merges at the boundary stay inside the per-question part). The prefix pass runs under the
same steering hooks as everything else, so its keys/values are steered exactly as in a full forward.

Shared prefix: the prompt runs once with ``return_type="logits_and_cache"``, which gives the
logits of the first answer token and the Hugging Face KV cache (``DynamicCache``). The cache
gets one row per answer (``batch_select_indices``) and all answers run as one right-padded
batch with ``past_key_values=cache``; the bridge hands the cache to HF, which continues the
positions after it. Right padding of the answers needs no mask: under causal attention a real
token never sees the padding after it, and padded log-probs are dropped. The last answer token
is not fed (its prediction is never used), so one-token answers need only the prompt pass.

``evaluate_truthfulqa`` batches several questions (``questions_per_batch``): their prompts are
left-padded into one prompt pass (attention mask + explicit ``position_ids``, so each prompt
keeps positions 0..len-1 and its cache row ends at its last token), then all their answers run
as one batch over the selected cache rows. On CPU a forward pass costs about the same for 1
token as for a few hundred (reading the weights dominates), so two passes per 8 questions
instead of two per question is most of the speed-up; feeding each prompt once instead of once
per answer is the rest.

If BPE merges across the prompt/answer boundary (the prompt's tokens are not a prefix of
``prompt + answer``'s), that answer is scored by a full forward of ``prompt + answer`` instead,
its tokens being those from the first position where the two tokenisations differ.

Both passes run inside ``steering.applied(model)``, so the cached keys/values of the prompt
are steered exactly as a full forward under the same hooks would steer them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import copy

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..tasks.base import Task
from ..tasks.truthfulqa import (
    ANSWER_FORMAT,
    DEFAULT_MC_PROMPT,
    INSTRUCTION_PROMPT,
    QA_PRESET,
    MCPrompt,
    MCQuestion,
    build_mc_prompts,
    check_mc_prompt_style,
)
from .forward import SteeringLike, masked_sum, steering_context, target_logprobs
from ..tokens import pad_id, right_pad, tokenize


@dataclass(frozen=True)
class TruthfulQAResult:
    """Per-question MC1 (0/1), MC2 (probability mass on true answers) and MC2 on length-normalised
    log-probs (``mc2_norm``: each answer's mean log-prob per token, lm-evaluation-harness's
    ``acc_norm`` idea), in ``questions`` order; ``answers``: per question, each MC2 answer's
    ``(answer, true, tokens, logprob)`` — what :mod:`real_lens.evaluation.decomposition` reads."""

    questions: tuple[str, ...]
    mc1: Float[np.ndarray, " question"]
    mc2: Float[np.ndarray, " question"]
    mc2_norm: Float[np.ndarray, " question"]
    answers: tuple[tuple[tuple[str, int, int, float], ...], ...] = ()

    def __post_init__(self):
        if not len(self.questions) == len(self.mc1) == len(self.mc2) == len(self.mc2_norm):
            raise ValueError(
                f"TruthfulQAResult needs one mc1, mc2 and mc2_norm value per question ({len(self.questions)}); "
                f"found {len(self.mc1)}, {len(self.mc2)} and {len(self.mc2_norm)}"
            )

    def per_answer(self) -> dict[str, list]:
        """The answers of every question as flat columns: group, answer, true, tokens, logprob."""
        rows = [(q, *answer) for q, answers in zip(self.questions, self.answers) for answer in answers]
        return {key: [row[i] for row in rows] for i, key in enumerate(("group", "answer", "true", "tokens", "logprob"))}

    @property
    def mc1_mean(self) -> float:
        return float(np.mean(self.mc1))

    @property
    def mc2_mean(self) -> float:
        return float(np.mean(self.mc2))


# --------------------------------------------------------------------------- scores
def score_mc1(logprobs_true: Sequence[float], logprobs_false: Sequence[float]) -> float:
    """1.0 if the single true answer's log-prob exceeds every false one's (ties count as 0)."""
    if len(logprobs_true) != 1 or len(logprobs_false) < 1:
        raise ValueError(
            f"MC1 needs exactly one true answer and at least one false one; found {len(logprobs_true)} true "
            f"and {len(logprobs_false)} false (use the question's mc1 targets)"
        )
    return float(logprobs_true[0] > max(logprobs_false))


def score_mc2(logprobs_true: Sequence[float], logprobs_false: Sequence[float]) -> float:
    """Σ p(true) / Σ p(all), p = exp(sum log-prob), computed as exp(logsumexp(true) − logsumexp(all))."""
    if len(logprobs_true) < 1 or len(logprobs_false) < 1:
        raise ValueError(
            f"MC2 needs at least one true and one false answer; found {len(logprobs_true)} true "
            f"and {len(logprobs_false)} false (use the question's mc2 targets)"
        )
    true = torch.tensor(list(logprobs_true), dtype=torch.float64)
    every = torch.cat([true, torch.tensor(list(logprobs_false), dtype=torch.float64)])
    return float(torch.exp(torch.logsumexp(true, 0) - torch.logsumexp(every, 0)))


def score_question(question: MCQuestion, logprobs: Mapping[str, float]) -> tuple[float, float]:
    """(MC1, MC2) of one question from the log-prob of each of its answers (keyed by answer text)."""
    def split(answers, labels):
        return ([logprobs[a] for a, y in zip(answers, labels) if y == 1],
                [logprobs[a] for a, y in zip(answers, labels) if y == 0])

    return (score_mc1(*split(question.mc1_answers, question.mc1_labels)),
            score_mc2(*split(question.mc2_answers, question.mc2_labels)))


def question_answers(question: MCQuestion, logprobs: Mapping[str, float], tokens: Mapping[str, int]):
    """``(mc2_norm, answers)`` of one question: MC2 on mean log-prob per token (an answer with no token
    counts as one), and each MC2 answer's ``(answer, true, tokens, logprob)``."""
    norm = {a: logprobs[a] / max(tokens[a], 1) for a in question.mc2_answers}
    true = [norm[a] for a, y in zip(question.mc2_answers, question.mc2_labels) if y == 1]
    false = [norm[a] for a, y in zip(question.mc2_answers, question.mc2_labels) if y == 0]
    answers = tuple((a, int(y), int(tokens[a]), float(logprobs[a])) for a, y in zip(question.mc2_answers,
                                                                                 question.mc2_labels))
    return score_mc2(true, false), answers


# --------------------------------------------------------------------------- evaluation
def select_mc_questions(task: Task, groups) -> list[MCQuestion]:
    """The MC targets of ``groups`` (e.g. ``fold.test``), in the task's question order."""
    mc = task.eval_data.get("mc")
    if mc is None:
        raise ValueError(f"task {task.name!r} has no multiple-choice targets (eval_data['mc']); load it with load_truthfulqa")
    keep = frozenset(groups)
    missing = keep - set(mc)
    if missing:
        raise ValueError(f"{len(missing)} group(s) have no MC targets in task {task.name!r}, e.g. {sorted(missing)[0]!r}")
    return [mc[g] for g in task.groups if g in keep]


def resolve_mc_prompt(mc_prompt: MCPrompt | str) -> MCPrompt:
    """An :class:`MCPrompt`, or a style name resolved against the standard texts (METHOD.md §6a)."""
    if isinstance(mc_prompt, MCPrompt):
        return mc_prompt
    if not isinstance(mc_prompt, str):
        raise TypeError(f"mc_prompt must be an MCPrompt or a style name; found {type(mc_prompt).__name__}")
    return build_mc_prompts(QA_PRESET, INSTRUCTION_PROMPT)[check_mc_prompt_style(mc_prompt)]


def evaluate_truthfulqa(
    model,
    questions: Sequence[MCQuestion],
    *,
    steering: SteeringLike | None = None,
    mc_prompt: MCPrompt | str = DEFAULT_MC_PROMPT,
    questions_per_batch: int = 8,
    progress: bool = True,
) -> TruthfulQAResult:
    """MC1 and MC2 of every question under ``mc_prompt`` (a style name or the task's
    ``eval_data["mc_prompts"][style]``). The prompt's shared prefix runs once; then, per batch of
    questions, one pass over their question prompts and one over all their answers."""
    if isinstance(questions, Mapping):
        raise TypeError(
            "questions must be a sequence of MCQuestion, found a mapping; pass "
            "select_mc_questions(task, fold.test) or list(task.eval_data['mc'].values())"
        )
    questions = list(questions)
    if not questions:
        raise ValueError("evaluate_truthfulqa needs at least one question; found none")
    if questions_per_batch < 1:
        raise ValueError(f"questions_per_batch must be at least 1; got {questions_per_batch}")
    bad = next((q for q in questions if not isinstance(q, MCQuestion)), None)
    if bad is not None:
        raise TypeError(f"questions must be MCQuestion objects (task.eval_data['mc'] values); found {type(bad).__name__}")
    mc_prompt = resolve_mc_prompt(mc_prompt)
    texts = [mc_prompt.format(q.question) for q in questions]
    mc1, mc2, mc2_norm, records = [], [], [], []
    chunks = [list(range(i, min(i + questions_per_batch, len(questions))))
              for i in range(0, len(questions), questions_per_batch)]
    with steering_context(model, steering), torch.inference_mode(), \
            tqdm(total=len(questions), desc="truthfulqa mc", unit="question", disable=not progress) as bar:
        prefix = SharedPrefix.build(model, mc_prompt.prefix, [tokenize(model, t) for t in texts])
        for chunk in chunks:
            answers = [list(dict.fromkeys(questions[i].mc1_answers + questions[i].mc2_answers)) for i in chunk]
            prompts = [tokenize(model, texts[i]) for i in chunk]
            fulls = [[tokenize(model, texts[i] + ANSWER_FORMAT.format(answer=a)) for a in ans]
                     for i, ans in zip(chunk, answers)]
            for q, ans, prompt, full, logprobs in zip((questions[i] for i in chunk), answers, prompts, fulls,
                                                      score_answer_tokens(model, prompts, fulls, prefix=prefix)):
                by_answer = dict(zip(ans, logprobs))
                s1, s2 = score_question(q, by_answer)
                tokens = {a: len(f) - answer_start(prompt, f) for a, f in zip(ans, full)}
                norm, record = question_answers(q, by_answer, tokens)
                mc1.append(s1)
                mc2.append(s2)
                mc2_norm.append(norm)
                records.append(record)
            bar.update(len(chunk))
    return TruthfulQAResult(tuple(q.question for q in questions), np.array(mc1), np.array(mc2), np.array(mc2_norm),
                            tuple(records))


def answer_logprobs(model, prompt: str, answers: Sequence[str], *, steering: SteeringLike | None = None) -> list[float]:
    """Sum of the log-probs of each answer's tokens after ``prompt`` (answers carry their own separator, e.g. " Paris")."""
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, found a single string; wrap it in a list")
    with steering_context(model, steering), torch.inference_mode():
        prompt_tokens = tokenize(model, prompt)
        full = [tokenize(model, prompt + a) for a in answers]
        return score_answer_tokens(model, [prompt_tokens], [full])[0]


# --------------------------------------------------------------------------- forward passes
@dataclass
class SharedPrefix:
    """The first ``len(tokens)`` tokens of every prompt of a call, run once; ``cache`` is their KV cache (one row)."""

    tokens: torch.Tensor
    cache: object

    @classmethod
    def build(cls, model, prefix_text: str, prompts: Sequence) -> "SharedPrefix | None":
        """Run the longest prefix of ``prefix_text``'s tokens that begins every prompt, and that leaves
        each prompt at least one token of its own; ``None`` when there is no prefix text."""
        if not prefix_text:
            return None
        tokens = tokenize(model, prefix_text)
        n = min([len(tokens)] + [min(answer_start(tokens, p), len(p) - 1) for p in prompts])
        if n < 1:
            return None
        _, cache = model(tokens[None, :n].to(model.cfg.device), return_type="logits_and_cache",
                         use_cache=True, logits_to_keep=1)
        return cls(tokens[:n], cache)

    def __len__(self) -> int:
        return len(self.tokens)

    def cache_for(self, n_rows: int):
        """A fresh copy of the prefix cache with ``n_rows`` identical rows (the forward passes extend it in place)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(n_rows)
        return cache


def answer_start(prompt_tokens, full_tokens) -> int:
    """Index of the first answer token: where the two tokenisations stop agreeing."""
    n = min(len(prompt_tokens), len(full_tokens))
    differ = (prompt_tokens[:n] != full_tokens[:n]).nonzero()
    return int(differ[0, 0]) if len(differ) else n


def score_answer_tokens(
    model, prompts: Sequence, fulls: Sequence[Sequence], *, prefix: SharedPrefix | None = None
) -> list[list[float]]:
    """For each prompt ``q``: the log-prob sum of ``fulls[q][i][answer_start:]`` for each of its answers.

    Answers whose prompt tokens are a prefix of theirs share one pass over all the prompts;
    the others (BPE merged across the boundary) are read whole. With ``prefix``, every prompt
    begins with ``prefix.tokens`` and the shared pass starts from its cache. Runs the forward
    passes as they are: the caller sets the steering context and inference mode.
    """
    scores = [[0.0] * len(f) for f in fulls]  # an answer with no tokens has log-prob 0
    shared, merged = [], []  # (question, answer) indices
    for q, (prompt, full) in enumerate(zip(prompts, fulls)):
        for i, tokens in enumerate(full):
            start = answer_start(prompt, tokens)
            if start == 0:
                raise ValueError(
                    "an answer's first token has no context to be predicted from (the prompt tokenises to "
                    "nothing the answer does not change); use a non-empty prompt or a model that prepends BOS"
                )
            if start < len(prompt):
                merged.append((q, i, start))
            elif len(tokens) > len(prompt):
                shared.append((q, i))
    if shared:
        used = sorted({q for q, _ in shared})
        row = {q: r for r, q in enumerate(used)}
        answers = [(row[q], fulls[q][i][len(prompts[q]):]) for q, i in shared]
        for (q, i), value in zip(shared, _score_shared_prefixes(model, [prompts[q] for q in used], answers, prefix)):
            scores[q][i] = value
    if merged:
        values = score_full(model, [fulls[q][i] for q, i, _ in merged], [start for *_, start in merged])
        for (q, i, _), value in zip(merged, values):
            scores[q][i] = value
    return scores


def _score_shared_prefixes(model, prompts: list, answers: list[tuple], prefix: SharedPrefix | None = None) -> list[float]:
    """``answers``: (prompt index, answer tokens) pairs. Prompts are left-padded into one batch
    (mask + explicit positions) so that every row's cache ends at its last prompt token. With a
    ``prefix``, only each prompt's tokens after it are fed, over a copy of its cache, and the
    masks and positions count the prefix's ``n_prefix`` positions first."""
    device = model.cfg.device
    n_prompts = len(prompts)
    n_prefix = len(prefix) if prefix is not None else 0
    prompts = [p[n_prefix:] for p in prompts]
    lengths = torch.tensor([len(p) for p in prompts])
    width = int(lengths.max())
    padded = bool((lengths != width).any())
    tokens = torch.full((n_prompts, width), pad_id(model), dtype=torch.long)
    for r, p in enumerate(prompts):
        tokens[r, width - len(p):] = p  # left padding: every row's last column is its last prompt token
    prompt_mask = torch.arange(width)[None, :] >= (width - lengths)[:, None]
    prompt_mask = torch.cat([torch.ones(n_prompts, n_prefix, dtype=torch.bool), prompt_mask], dim=1)
    kwargs = {}
    if prefix is not None:
        kwargs["past_key_values"] = prefix.cache_for(n_prompts)
    if padded:
        kwargs.update(attention_mask=prompt_mask.long().to(device),
                      position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0)[:, n_prefix:].to(device))
    logits, cache = model(tokens.to(device), return_type="logits_and_cache", use_cache=True, logits_to_keep=1, **kwargs)
    first = logits[:, -1].float().log_softmax(-1)  # [prompt, vocab]: predicts each answer's first token
    owner = torch.tensor([q for q, _ in answers])
    scores = first[owner.to(first.device), torch.stack([a[0] for _, a in answers]).to(first.device)].double()
    longer = [k for k, (_, a) in enumerate(answers) if len(a) > 1]
    if longer:
        rows = owner[longer]
        inputs = right_pad(model, [answers[k][1][:-1] for k in longer])
        targets = right_pad(model, [answers[k][1][1:] for k in longer])
        answer_mask = torch.arange(inputs.shape[1])[None, :] < torch.tensor([len(answers[k][1]) - 1 for k in longer])[:, None]
        cache.batch_select_indices(rows.to(device))  # one cache row per answer (in place; the cache is ours)
        kwargs = {}
        if padded:
            kwargs = {
                "attention_mask": torch.cat([prompt_mask[rows], answer_mask], dim=1).long().to(device),
                "position_ids": (n_prefix + lengths[rows][:, None] + torch.arange(inputs.shape[1])[None, :]).to(device),
            }
        rest = model(inputs.to(device), past_key_values=cache, **kwargs)
        scores[longer] += masked_sum(target_logprobs(rest, targets), answer_mask).to(scores.device)
    return [float(s) for s in scores]


def score_full(model, sequences: Sequence, starts: Sequence[int]) -> list[float]:
    """Log-prob sums of ``sequences[i][starts[i]:]``, each read whole (no sharing), as one right-padded batch."""
    seqs = list(sequences)
    if len(starts) != len(seqs) or min(starts) < 1:
        raise ValueError(f"score_full needs one answer start >= 1 per sequence; got {list(starts)} for {len(seqs)} sequences")
    tokens = right_pad(model, seqs).to(model.cfg.device)
    first = min(starts)  # logits are kept only from position first - 1, the first that predicts an answer token
    logits = model(tokens, use_cache=False, logits_to_keep=tokens.shape[1] - first + 1)[:, :-1]
    targets = tokens[:, first:]
    target_pos = torch.arange(first, tokens.shape[1])[None, :]
    lengths = torch.tensor([len(s) for s in seqs])
    mask = (target_pos >= torch.tensor(list(starts))[:, None]) & (target_pos < lengths[:, None])
    values = masked_sum(target_logprobs(logits, targets), mask)
    return [float(v) for v in values]
