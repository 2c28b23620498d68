"""A steering in the formats other tools read: per-layer vectors, lm-evaluation-harness, steering-vectors.

A head steering adds ``δ_h = α · strength · σ · u`` to head ``h``'s ``hook_z``, the input of the
attention's output projection. That projection is linear, so at every position the attention
output (the ``o_proj`` output, ``blocks.{l}.hook_attn_out``) moves by exactly

    v_l = Σ_h δ_h · W_O[l, h]        (TransformerLens's W_O: [n_heads, d_head, d_model])

Adding ``v_l`` there is therefore the same intervention as ours when the steering applies at
every position (``positions="all"``, the paper's), up to float rounding. Layer-site steerings
(``attn_out``, ``mlp_out``, ``resid_post``) already are per-layer vectors.

- :func:`to_layer_vectors` — ``{layer: v_l}`` and the site they belong to;
- :func:`to_layer_steering` — the same as a layer-site :class:`~real_lens.steering.Steering`;
- :func:`save_lm_eval_steering` — the file lm-evaluation-harness's ``steered`` model loads
  (``lm_eval --model steered --model_args pretrained=<model>,steer_path=<file>.pt``), so any of
  its tasks runs under this steering;
- :func:`to_steering_vector` — a ``steering_vectors.SteeringVector`` (the steering-vectors
  package, when installed; :func:`to_steering_vector_fields` gives its two fields without it).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from . import hooks
from .errors import RealLensError
from .steering import Steering


def _model_first(fn):
    """Every export takes ``(model, steering, ...)``, model first as everywhere in real-lens; the old
    ``(steering, model, ...)`` order still works for one release, with a DeprecationWarning."""

    @functools.wraps(fn)
    def export(model, steering, *args, **kwargs):
        if isinstance(model, Steering) and not isinstance(steering, Steering):
            warnings.warn(f"{fn.__name__}(steering, model) is deprecated; call {fn.__name__}(model, steering)",
                          DeprecationWarning, stacklevel=2)
            model, steering = steering, model
        return fn(model, steering, *args, **kwargs)

    return export

# Where each site's per-layer vector is added, in the Hugging Face model's own terms:
# the module whose output it is, and steering-vectors' name for that kind of module.
_HF_SITE = {
    "attn_out": ("attn.o", "self_attn"),  # the output projection (o_proj): the attention's output
    "mlp_out": ("mlp", "mlp"),
    "resid_post": ("", "decoder_block"),  # the decoder block's output
}
LM_EVAL_ACTION = "add"


@dataclass(frozen=True)
class LayerVectors:
    """Per layer, the vector added at every position of ``site`` (``attn_out``, ``mlp_out`` or ``resid_post``)."""

    site: str
    vectors: dict[int, Float[Tensor, " d_model"]]


@_model_first
def to_layer_vectors(model, steering: Steering) -> LayerVectors:
    """The steering as one ``[d_model]`` vector per layer (head steerings through W_O, at ``attn_out``)."""
    steering.check_model(model)
    if not hooks.is_head_site(steering.site):
        return LayerVectors(steering.site, {layer: v.float() for layer, v in sorted(steering.layer_offsets().items())})
    vectors = {}
    for layer, offset in sorted(steering.layer_offsets(model.cfg.n_heads).items()):
        W_O = model.blocks[layer].attn.W_O.detach().float().cpu()  # [n_heads, d_head, d_model]
        vectors[layer] = einops.einsum(offset.float(), W_O, "head d_head, head d_head d_model -> d_model")
    return LayerVectors("attn_out", vectors)


@_model_first
def to_layer_steering(model, steering: Steering) -> Steering:
    """The same intervention as a layer-site :class:`Steering` (one module per layer, strength 1).

    It keeps ``alpha``: its σ is ‖v_l‖ at α = 1, so ``with_alpha`` scales it as it scales the
    original.
    """
    unit = to_layer_vectors(model, steering.with_alpha(1.0))
    layers = sorted(unit.vectors)
    stacked = torch.stack([unit.vectors[layer] for layer in layers])  # [layer, d_model]
    norms = stacked.norm(dim=-1)
    directions = stacked / norms.clamp(min=torch.finfo(stacked.dtype).tiny)[:, None]
    return Steering(
        site=unit.site, modules=tuple((layer, None) for layer in layers), directions=directions, sigmas=norms,
        strengths=torch.ones(len(layers)), alpha=steering.alpha, method=steering.method,
        meta={**{k: v for k, v in steering.meta.items() if k not in ("module_shape", "act_norms")},
              "module_shape": [model.cfg.n_layers], "exported_from": {"site": steering.site,
                                                                      "modules": [list(m) for m in steering.modules]}},
    )


# --------------------------------------------------------------------------- lm-evaluation-harness
@_model_first
def to_lm_eval_config(model, steering: Steering) -> dict[str, dict]:
    """lm-evaluation-harness's steer config: ``{hookpoint: {steering_vector, steering_coefficient, action,
    bias, head_index}}``.

    Hookpoints are module names under the Hugging Face model's ``base_model`` (e.g.
    ``layers.3.self_attn.o_proj``); its ``add`` action adds ``steering_coefficient ·
    steering_vector`` to that module's output at every position. The vector is this steering's
    per-layer vector at α = 1 and the coefficient is α, so the coefficient plays α's role.
    """
    unit = to_layer_vectors(model, steering.with_alpha(1.0))
    return {
        find_hf_module(model, layer, unit.site): {
            "steering_vector": vector.contiguous(), "steering_coefficient": float(steering.alpha),
            "action": LM_EVAL_ACTION, "bias": None, "head_index": None,
        }
        for layer, vector in unit.vectors.items()
    }


LM_EVAL_SUFFIXES = (".pt", ".pth")  # the only files lm-evaluation-harness's steered model reads
VECTORS_KIND = "vectors"
VECTORS_FILES = ("vectors.safetensors", "vectors.json")


@_model_first
def save_lm_eval_steering(model, steering: Steering, path) -> Path:
    """Write :func:`to_lm_eval_config` where ``lm_eval --model steered ... steer_path=<path>`` reads it.

    The harness reads only ``.pt``/``.pth`` files through ``torch.load(weights_only=True)``, so
    this is the one artifact real-lens writes with ``torch.save``: plain tensors, floats and
    strings, which that restricted loader accepts (no code objects). It is serialised in memory
    first and written like every file (atomically; a full disk or a file-size limit is an OSError
    naming the file, not torch's ``basic_ios::clear``).
    """
    import io

    from .io import atomic_write

    path = Path(path)
    if path.suffix not in LM_EVAL_SUFFIXES:
        raise RealLensError(f"lm-evaluation-harness reads steering files ending in .pt or .pth; got {path.name!r}")
    buffer = io.BytesIO()
    torch.save(to_lm_eval_config(model, steering), buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    return path


def save_layer_vectors(model, steering: Steering, directory) -> "LayerVectors":
    """:func:`to_layer_vectors` saved as an artifact (``vectors.safetensors`` + ``vectors.json`` + a
    manifest) at ``directory``, published whole; returns the vectors."""
    from .artifacts import artifact_writer
    from .io import write_json, write_tensors

    vectors = to_layer_vectors(model, steering)
    with artifact_writer(directory, kind=VECTORS_KIND, replaces=set(VECTORS_FILES)) as staging:
        write_tensors(staging / VECTORS_FILES[0], {f"layer.{layer}": v for layer, v in vectors.vectors.items()})
        write_json(staging / VECTORS_FILES[1], {"site": vectors.site, "hook": hooks.hook_template(vectors.site),
                                                "layers": sorted(vectors.vectors), "alpha": steering.alpha,
                                                "method": steering.method, "meta": steering.meta})
    return vectors


# --------------------------------------------------------------------------- steering-vectors
@_model_first
def to_steering_vector_fields(model, steering: Steering) -> tuple[dict[int, Tensor], str]:
    """``(layer_activations, layer_type)``: the fields of a steering-vectors ``SteeringVector``.

    ``SteeringVector(layer_activations, layer_type).apply(hf_model)`` adds each vector to the
    output of that layer's module of ``layer_type`` at every position.
    """
    vectors = to_layer_vectors(model, steering)
    return dict(vectors.vectors), _HF_SITE[vectors.site][1]


@_model_first
def to_steering_vector(model, steering: Steering):
    """A ``steering_vectors.SteeringVector`` (needs the steering-vectors package; not a dependency)."""
    try:
        from steering_vectors import SteeringVector
    except ModuleNotFoundError:
        raise RealLensError(
            "to_steering_vector needs the steering-vectors package (pip install steering-vectors); "
            "to_steering_vector_fields(model, steering) gives its fields without it"
        ) from None
    layer_activations, layer_type = to_steering_vector_fields(model, steering)
    return SteeringVector(layer_activations=layer_activations, layer_type=layer_type)


# --------------------------------------------------------------------------- names
def find_hf_module(model, layer: int, site: str) -> str:
    """The Hugging Face module (under ``base_model``) whose output ``site``'s vector is added to.

    Read from the TransformerBridge's components, which carry the Hugging Face names
    (``model.layers.3``, ``self_attn``, ``o_proj``).
    """
    if site not in _HF_SITE:
        raise RealLensError(f"site {site!r} has no per-layer Hugging Face module; expected one of {sorted(_HF_SITE)}")
    original = getattr(model, "original_model", None)
    if original is None:
        raise RealLensError("exporting Hugging Face module names needs a TransformerBridge (real_lens.load_model)")
    component = model.blocks[layer]
    parts = [component.name]
    for attr in filter(None, _HF_SITE[site][0].split(".")):
        component = getattr(component, attr, None)
        if component is None or not getattr(component, "name", None):
            raise RealLensError(f"this model's bridge has no {_HF_SITE[site][0]!r} component; cannot name {site!r} "
                                "as a Hugging Face module")
        parts.append(component.name)
    name = ".".join(parts)
    prefix = f"{original.base_model_prefix}."
    return name[len(prefix):] if name.startswith(prefix) else name
