"""Where task data comes from: unknown tasks, missing files and a missing data folder."""

import pytest

from real_lens.errors import DataError
from real_lens.tasks import load_task
from real_lens.tasks.truthfulqa import load_truthfulqa


def test_missing_file_and_unknown_task():
    with pytest.raises(DataError, match="does not exist"):
        load_task("file:/no/such/file.csv")
    with pytest.raises(Exception, match="unknown task 'nope'.*truthfulqa"):
        load_task("nope")


def test_missing_data_dir_is_reported(tmp_path):
    with pytest.raises(DataError, match="TruthfulQA multiple-choice file not found"):
        load_truthfulqa(data_dir=tmp_path)
