"""analyses/published_rankings.py on rankings made here in the release's file layout (no release needed)."""

import numpy as np
import pytest

from analyses import published_rankings as pr


def write(folder, model, fold, values, n_heads):
    rows = np.empty((len(values), 2), dtype=object)
    for i, value in enumerate(values):
        rows[i, 0], rows[i, 1] = divmod(i, n_heads), float(value)
    name = f"Model_{model}_fold_{fold}_seed_42_top_heads_layer_total_codebook_32_units_8_pratio_0.0_{len(values)}.npy"
    np.save(folder / name, rows)


def test_statistics_and_fold_agreement(tmp_path):
    folder = tmp_path / pr.HEAD_SORTED
    folder.mkdir(parents=True)
    values = np.linspace(0.4, 0.9, 12)
    write(folder, "toy", 0, values, 4)
    write(folder, "toy", 1, values[::-1], 4)  # the reverse order: rho -1, disjoint top 3
    data = pr.analyse(pr.Config(release=str(tmp_path), k=3))
    toy = data["models"]["toy"]
    assert toy["folds"]["0"]["shape"] == [3, 4] and toy["folds"]["0"]["max_auc"] == pytest.approx(0.9)
    assert toy["fold0_vs_fold1"]["spearman"] == pytest.approx(-1.0) and toy["fold0_vs_fold1"]["jaccard_top_k"] == 0.0
    assert "| toy | 12 (3 x 4) | 0 / 1 |" in "\n".join(pr.table(data, 3))


def test_a_folder_without_rankings_is_one_line(tmp_path):
    with pytest.raises(pr.RealLensError, match="has no validation/results_dump/head_sorted"):
        pr.analyse(pr.Config(release=str(tmp_path)))
