"""Scores and steering are only ever used with the model and the bank they came from."""

import pytest

from real_lens.activations import collect_activations
from real_lens.bank import ActivationBank
from real_lens.errors import ProvenanceError
from real_lens.models import build_tiny_hf_model, load_model, model_identity
from real_lens.scoring import ModuleScores, get_scorer
from real_lens.steering import Steering, build_steering

from .conftest import assert_one_line, cli, write_task


def _model_dir(path, **shape):
    """A local model directory: a tiny Llama with another seed (same shapes) or other shapes."""
    hf_model, tokenizer = build_tiny_hf_model(**shape)
    hf_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model):
    from real_lens.cli import main

    root = tmp_path_factory.mktemp("prov")
    task = write_task(root / "beh.csv")
    assert main(["collect", "--model", "tiny-llama", "--task", f"file:{task}", "--out", str(root / "bank")]) == 0
    assert main(["score", "--bank", str(root / "bank"), "--method", "iti", "--out", str(root / "scores")]) == 0
    _model_dir(root / "same-shapes", seed=1)
    _model_dir(root / "other-shapes", n_layers=3)
    return root


def test_scores_record_the_model_and_the_bank(made):
    scores, bank = ModuleScores.load(made / "scores"), ActivationBank.load(made / "bank")
    assert scores.meta["bank_digest"] == bank.digest
    assert scores.meta["model"] == bank.meta["model"] and scores.meta["model"]["fingerprint"].startswith("tiny-llama")


@pytest.mark.parametrize("other", ["same-shapes", "other-shapes"])
def test_steering_scores_of_one_model_on_another_is_one_line(capsys, made, other):
    code, out, err = cli(capsys, "steer", "--scores", made / "scores", "--top-k", "2", "--prompt", "Q: is 4 even? A:",
                         "--max-new-tokens", "2", "--model", made / other)
    assert_one_line(code, err, contains="came from model 'tiny-llama'")
    assert out == ""  # nothing was generated


def test_steer_defaults_to_the_scores_model(capsys, made):
    code, out, err = cli(capsys, "steer", "--scores", made / "scores", "--top-k", "2", "--prompt", "Q: is 4 even? A:",
                         "--max-new-tokens", "2")
    assert code == 0, err
    assert "[steered: iti, top 2" in out


def test_a_bank_overwritten_after_scoring_is_refused(capsys, made, tmp_path):
    import shutil

    from real_lens.cli import main

    shutil.copytree(made / "bank", tmp_path / "bank")
    assert main(["score", "--bank", str(tmp_path / "bank"), "--method", "random", "--out", str(tmp_path / "scores")]) == 0
    assert main(["collect", "--model", "tiny-llama", "--task", f"file:{made / 'beh.csv'}", "--readout", "mean_answer",
                 "--out", str(tmp_path / "bank")]) == 0  # the same directory, now another bank
    code, out, err = cli(capsys, "steer", "--scores", tmp_path / "scores", "--top-k", "2", "--prompt", "x",
                         "--max-new-tokens", "2")
    assert_one_line(code, err, contains="is not the one the scores")
    code, out, err = cli(capsys, "steer", "--scores", tmp_path / "scores", "--bank", made / "bank", "--top-k", "2",
                         "--prompt", "x", "--max-new-tokens", "2")
    assert code == 0, err  # the original it was copied from: the same content, so the same digest


def test_patching_a_bank_with_another_model_is_one_line(capsys, made, tmp_path):
    code, _, err = cli(capsys, "score", "--bank", made / "bank", "--method", "attribution", "--model", made / "same-shapes",
                       "--out", tmp_path / "s")
    assert_one_line(code, err)
    assert "tiny-llama" in err and not (tmp_path / "s").exists()


def test_saved_steering_refuses_another_model(made, tiny_model, tmp_path):
    bank = ActivationBank.load(made / "bank")
    scores = ModuleScores.load(made / "scores")
    steering = build_steering(bank, scores.top_k(2), alpha=3.0)
    assert steering.meta["bank_digest"] == bank.digest
    loaded = Steering.load(steering.save(tmp_path / "steer"))
    with loaded.applied(tiny_model):
        pass
    other = load_model(str(made / "same-shapes"))
    assert model_identity(other)["fingerprint"] != model_identity(tiny_model)["fingerprint"]
    with pytest.raises(ProvenanceError, match="came from model 'tiny-llama'"):
        with loaded.applied(other):
            pass


def test_library_scores_record_their_source_in_a_run(made, tiny_model, tmp_path):
    from real_lens.experiment import cached_scores, config_for

    bank = collect_activations(tiny_model, ActivationBank.load(made / "bank").examples, progress=False)
    cfg = config_for("quick", model="tiny-llama")
    scores = cached_scores(tmp_path, cfg, 0, "random", bank, tiny_model)
    assert scores.meta["bank_digest"] == bank.digest and scores.meta["bank_key"] == bank.meta["cache_key"]
    assert get_scorer("random")  # the registry still answers after the run's imports
