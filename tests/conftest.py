"""Fixtures the whole suite shares (helpers that are not fixtures: tests/helpers.py)."""

import os

import pytest

from real_lens.errors import ModelLoadError
from real_lens.models import QWEN_MODEL, SPLIT, load_model
from real_lens.models.embedded import split_gguf_chunks
from tests.helpers import DATA


@pytest.hookimpl(trylast=True)  # after `-m` has deselected (make test's default `-m 'not qwen'`)
def pytest_collection_modifyitems(config, items):
    """Tests marked ``qwen`` need the 1.5B model's parts (``make qwen``); selected without them, the
    run stops with one line saying so (a skip would read as a pass)."""
    if any(item.get_closest_marker("qwen") for item in items):
        try:
            split_gguf_chunks(SPLIT[QWEN_MODEL])
        except ModelLoadError as exc:
            pytest.exit(f"the qwen tests need {QWEN_MODEL}, which is not installed: {exc}", returncode=1)


def pytest_sessionfinish(session, exitstatus):
    """Under CI a skipped test fails the run: tests skip when ../shared/data is absent, and that
    must not pass as green where the data is supposed to be."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and exitstatus == 0:
        reporter.ensure_newline()
        reporter.write_line(f"CI: {skipped} test(s) were skipped; a skip does not count as a pass here", red=True)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def isolated_cache(tmp_path_factory):
    """Caches (dequantised models, activation banks) go to a per-session temp dir, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("REAL_LENS_CACHE", str(tmp_path_factory.mktemp("real_lens_cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _caches_are_isolated(request):
    """Every test but the integration and qwen tests (which reuse the embedded models' real cache) gets the isolated cache."""
    if request.node.get_closest_marker("integration") is None and request.node.get_closest_marker("qwen") is None:
        request.getfixturevalue("isolated_cache")


@pytest.fixture(scope="session")
def tiny_model(request, isolated_cache):
    """A seeded random 2-layer Llama (4 heads, d_head 16, grouped KV) with a byte tokenizer; under
    ``tests.helpers.each_tiny_model`` (indirect parametrisation) each tiny architecture in turn,
    ``tiny-qwen2`` adding q/k/v biases and d_head 16 != d_model 48 / 4 heads."""
    return load_model(getattr(request, "param", "tiny-llama"))


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct (first load dequantises the GGUF, ~40 s; then cached)."""
    return load_model()


@pytest.fixture(scope="session")
def qwen():
    """Qwen2.5-Coder-1.5B-Instruct in float32 (first load joins, verifies and dequantises its parts, ~4 min; then cached)."""
    return load_model(QWEN_MODEL, device="cpu")


@pytest.fixture(scope="module")
def nq_tasks():
    """NQ-Swap's first 60 questions, steered towards the context and towards memory."""
    if DATA is None:
        pytest.skip("../shared/data is not present")
    from real_lens.tasks.nq_swap import load_nq_swap

    return load_nq_swap(n_questions=60), load_nq_swap(n_questions=60, direction="memory")
