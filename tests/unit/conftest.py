import pytest

from real_lens.models import load_model


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Unit tests never touch the user's cache: caches go to a per-session temp dir."""
    mp = pytest.MonkeyPatch()
    mp.setenv("REAL_LENS_CACHE", str(tmp_path_factory.mktemp("real_lens_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_model(_isolated_cache):
    """A seeded random 2-layer Llama (4 heads, d_head 16, grouped KV) with a byte tokenizer."""
    return load_model("tiny-llama")
