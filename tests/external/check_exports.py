"""Check the exports against the real consumers: lm-evaluation-harness's ``steered`` model and steering-vectors.

Not part of the test suite (pytest collects only ``test_*.py``): neither package is a dependency.
lm-eval pulls a large tree, and steering-vectors requires transformers < 5, which real-lens cannot
use. tests/unit/test_export.py applies both formats with the semantics these packages implement;
this script runs the packages themselves, installed beside (not into) the environment:

    pip install --no-deps --target /tmp/ext lm-eval==0.4.13 steering-vectors==0.12.2 peft evaluate \\
        sqlitedict word2number more-itertools pytablewriter DataProperty mbstrdecoder pathvalidate \\
        tabledata tcolorpy typepy chardet jsonlines zstandard
    PYTHONPATH=/tmp/ext python tests/external/check_exports.py

It prints the largest logit difference between each consumer and real-lens's own steering on the
tiny random model, next to the size of the steering's effect; it exits 1 if any difference is
above 1e-5.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from real_lens.export import save_lm_eval_steering, to_steering_vector  # noqa: E402
from real_lens.models import build_tiny_hf_model, load_model  # noqa: E402
from tests.unit.test_export import PROMPT, _head_steering, _steered_logits  # noqa: E402

TOLERANCE = 1e-5


def main() -> int:
    from lm_eval.models.hf_steered import SteeredModel

    model = load_model("tiny-llama")
    steering = _head_steering(model)
    tokens = model.to_tokens(PROMPT)
    ours = _steered_logits(model, steering)
    with torch.inference_mode():
        effect = float((ours - model(tokens)[0]).abs().max())

    folder = Path(tempfile.mkdtemp())
    hf_model, tokenizer = build_tiny_hf_model()
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    path = save_lm_eval_steering(steering, model, folder / "steer.pt")
    harness = SteeredModel(pretrained=str(folder), steer_path=str(path), device="cpu", dtype="float32", batch_size=1)
    with torch.no_grad():
        lm_eval_diff = float((harness._model_call(tokens)[0] - ours).abs().max())

    vector = to_steering_vector(steering, model)
    with torch.no_grad(), vector.apply(hf_model):
        sv_diff = float((hf_model(tokens).logits[0] - ours).abs().max())

    print(f"steering effect on the logits: max |change| {effect:.4f}")
    print(f"lm-eval SteeredModel ({sorted(harness.hook_to_steer)}): max |diff| {lm_eval_diff:.2e}")
    print(f"steering-vectors SteeringVector (layer_type {vector.layer_type!r}): max |diff| {sv_diff:.2e}")
    return 0 if max(lm_eval_diff, sv_diff) <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
