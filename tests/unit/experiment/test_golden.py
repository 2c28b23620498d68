"""The main job's results are a fixed point of refactoring: the quick run on the tiny model equals the
golden files (tests/golden/quick-tiny-llama/README.md says where they come from and when they change)."""

import json
from pathlib import Path

from real_lens.cli import main
from tests.helpers import needs_data

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "quick-tiny-llama"


@needs_data
def test_quick_run_equals_the_golden_results(tmp_path, tiny_model, capsys):
    assert main(["--quiet", "run", "--quick", "--model", "tiny-llama", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert (tmp_path / "results.csv").read_bytes() == (GOLDEN / "results.csv").read_bytes()
    golden, summary = (json.loads((d / "summary.json").read_text()) for d in (GOLDEN, tmp_path))
    assert {key: summary.get(key) for key in golden} == golden
