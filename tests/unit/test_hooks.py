import pytest

from real_lens import hooks
from real_lens.errors import RealLensError


def test_hook_names_are_the_transformerlens_names():
    assert hooks.head_z(3) == "blocks.3.attn.hook_z"
    assert hooks.attn_out(0) == "blocks.0.hook_attn_out"
    assert hooks.mlp_out(1) == "blocks.1.hook_mlp_out"
    assert hooks.resid_post(29) == "blocks.29.hook_resid_post"
    assert hooks.hook_template("head_z") == "blocks.{layer}.attn.hook_z"


def test_head_sites_and_labels():
    assert hooks.is_head_site("head_z") and not hooks.is_head_site("resid_post")
    assert hooks.module_label(12, 3) == "L12H3" and hooks.module_label(4) == "L4"


def test_unknown_site_lists_valid_ones():
    with pytest.raises(RealLensError, match="unknown site 'z'.*head_z"):
        hooks.hook_name("z", 0)
