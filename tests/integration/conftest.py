import pytest

from real_lens.models import load_model


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct (first load dequantises the GGUF, ~40 s; then cached)."""
    return load_model()
