"""The only place TransformerLens hook names are spelled.

A *site* is where a module's activation is read and steered:

- ``head_z``     ``blocks.{l}.attn.hook_z``     per head ``[d_head]`` (input of W_O; ITI/REAL's site)
- ``attn_out``   ``blocks.{l}.hook_attn_out``   per layer ``[d_model]``
- ``mlp_out``    ``blocks.{l}.hook_mlp_out``    per layer ``[d_model]``
- ``resid_post`` ``blocks.{l}.hook_resid_post`` per layer ``[d_model]``
"""

from __future__ import annotations

from .errors import unknown_name_error

_TEMPLATES = {
    "head_z": "blocks.{layer}.attn.hook_z",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "resid_post": "blocks.{layer}.hook_resid_post",
}
SITES: tuple[str, ...] = tuple(_TEMPLATES)
HEAD_SITES: frozenset[str] = frozenset({"head_z"})


def check_site(site: str) -> str:
    if site not in _TEMPLATES:
        raise unknown_name_error("site", site, SITES)
    return site


def is_head_site(site: str) -> bool:
    return check_site(site) in HEAD_SITES


def hook_name(site: str, layer: int) -> str:
    return _TEMPLATES[check_site(site)].format(layer=layer)


def hook_template(site: str) -> str:
    """The hook name with ``{layer}`` left open, as stored in bank metadata."""
    return _TEMPLATES[check_site(site)]


def head_z(layer: int) -> str:
    return hook_name("head_z", layer)


def attn_out(layer: int) -> str:
    return hook_name("attn_out", layer)


def mlp_out(layer: int) -> str:
    return hook_name("mlp_out", layer)


def resid_post(layer: int) -> str:
    return hook_name("resid_post", layer)


def module_label(layer: int, head: int | None = None) -> str:
    """How a module prints: ``L{layer}H{head}`` for heads, ``L{layer}`` for layers."""
    return f"L{layer}" if head is None else f"L{layer}H{head}"
