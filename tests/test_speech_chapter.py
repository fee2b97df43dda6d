"""The speech chapter: executed by papermill with tiny parameters on the real FSDD and TIMIT-sample
copies, checked with nbval, and its committed records checked for the protocol the book states."""

from pathlib import Path

import pandas as pd
import pytest

from chapter_helpers import (
    error_outputs, execute_chapter, parameters_source, plotly_outputs, run_nbval,
)
from fwdbwd_lib.study import load_study, summary_table

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[1]
CHAPTER = REPOSITORY / "book" / "speech.ipynb"
RUNS = REPOSITORY / "book" / "runs" / "speech"
TINY = {
    "rerun": True, "device": "cpu", "seeds": [0, 1],
    "fsdd_epochs": 1, "fsdd_batch_size": 32, "fsdd_train_size": 64, "fsdd_validation_size": 32,
    "fsdd_test_size": 32,
    "fsdd_learning_rates": {"backprop": [0.03, 0.1], "forward_gradient": [0.0001, 0.001]},
    "timit_epochs": 1, "timit_batch_size": 4, "timit_train_size": 8, "timit_validation_size": 4,
    "timit_test_size": 4,
    "timit_learning_rates": {"backprop": [0.03, 0.1], "forward_gradient": [0.0001, 0.001]},
}
FIGURES_PER_TASK = 4  # learning-rate grid, curves, test accuracy, cost



@pytest.fixture(scope="module")
def executed_chapter(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("speech")
    parameters = {**TINY, "runs_dir": str(folder / "runs"), "data_root": str(data_root)}
    return execute_chapter(CHAPTER, folder / "speech.ipynb", parameters)

def test_chapter_runs_with_tiny_parameters(executed_chapter):
    assert not error_outputs(executed_chapter)
    assert len(plotly_outputs(executed_chapter)) == 2 * FIGURES_PER_TASK

    for task, num_train in (("fsdd", 64), ("timit", 8)):
        study = load_study(executed_chapter.parent / "runs" / task)
        final = study["final"]
        assert set(final["config.method"]) == {"backprop", "forward_gradient"}
        assert (final.groupby("config.method")["config.seed"].nunique() == 2).all()
        assert len(study["tuning"]) >= 4
        assert (final["environment.num_train"] == num_train).all()
        assert (executed_chapter.parent / "runs" / task / "data_summary.csv").is_file()


def test_chapter_passes_nbval(executed_chapter):
    """nbval re-executes the papermill output cell by cell, training its tiny runs again."""
    result = run_nbval(executed_chapter)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("task, num_train, num_test", [("fsdd", 2400, 300), ("timit", 96, 16)])
def test_committed_records_follow_the_protocol(task, num_train, num_test):
    """The records the built book shows: both methods, 3 seeds at the chosen rate, the grid."""
    study = load_study(RUNS / task)
    manifest, final = study["manifest"], study["final"]
    for method in ("backprop", "forward_gradient"):
        runs = final[final["config.method"] == method]
        assert sorted(runs["config.seed"]) == [0, 1, 2]
        assert runs["config.optimizer.lr"].nunique() == 1
        chosen = manifest["chosen"][method]
        assert len(chosen["grid"]) >= 4
        assert max(chosen["grid"]) / min(chosen["grid"]) >= 100
        assert chosen["at_edge"] is None  # a worse rate on each side of the chosen one
    assert final["summary.steps"].nunique() == 1  # the same number of steps for every run
    assert (final["environment.num_train"] == num_train).all()
    assert (final["environment.num_test"] == num_test).all()
    for column in ("environment.git_commit", "environment.torch_version",
                   "environment.hardware.cpu", "environment.dataset_variant"):
        assert final[column].notna().all(), column
    assert set(summary_table(study)["method"]) == {"backprop", "forward_gradient"}
    summary = pd.read_csv(RUNS / task / "data_summary.csv", index_col=0)
    assert summary.loc["train", "utterances"] == num_train


def test_committed_chapter_shows_figures():
    assert len(plotly_outputs(CHAPTER)) == 2 * FIGURES_PER_TASK
    assert "rerun = False" in parameters_source(CHAPTER)
