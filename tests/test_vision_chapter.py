"""The vision chapter: executed by papermill with tiny parameters on the real CIFAR-10 copy,
checked with nbval, and its committed records checked for the protocol the book states."""

from pathlib import Path

import pytest

from chapter_helpers import (
    error_outputs, execute_chapter, parameters_source, plotly_outputs, run_nbval,
)
from fwdbwd_lib.study import load_study, summary_table

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[1]
CHAPTER = REPOSITORY / "book" / "vision.ipynb"
TINY = {
    "rerun": True, "epochs": 1, "train_size": 256, "validation_size": 128, "test_size": 256,
    "seeds": [0, 1], "eval_every_steps": 2, "batch_size": 64, "device": "cpu",
    "learning_rates": {"backprop": [0.01, 0.1], "forward_gradient": [0.0001, 0.001]},
}


@pytest.fixture(scope="module")
def executed_chapter(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("vision")
    parameters = {**TINY, "runs_dir": str(folder / "runs"), "data_root": str(data_root)}
    return execute_chapter(CHAPTER, folder / "vision.ipynb", parameters)

def test_chapter_runs_with_tiny_parameters(executed_chapter):
    assert not error_outputs(executed_chapter)
    # The learning-rate grid, curves, test accuracy and cost.
    assert len(plotly_outputs(executed_chapter)) == 4

    study = load_study(executed_chapter.parent / "runs")
    final = study["final"]
    assert set(final["config.method"]) == {"backprop", "forward_gradient"}
    assert (final.groupby("config.method")["config.seed"].nunique() == 2).all()
    assert len(study["tuning"]) >= 4
    assert (final["environment.num_train"] == 256).all()
    assert (final["config.epochs"] == 1).all()


def test_chapter_passes_nbval(executed_chapter):
    """nbval re-executes the papermill output cell by cell, training its tiny runs again."""
    result = run_nbval(executed_chapter)
    assert result.returncode == 0, result.stdout[-3000:]


def test_committed_records_follow_the_protocol():
    """The records the built book shows: both methods, 3 seeds at the chosen rate, the grid."""
    runs_dir = REPOSITORY / "book" / "runs" / "vision"
    study = load_study(runs_dir)
    manifest = study["manifest"]
    final = study["final"]
    for method in ("backprop", "forward_gradient"):
        runs = final[final["config.method"] == method]
        assert sorted(runs["config.seed"]) == [0, 1, 2]
        assert runs["config.optimizer.lr"].nunique() == 1
        grid = manifest["chosen"][method]["grid"]
        assert len(grid) >= 4
        assert max(grid) / min(grid) >= 100  # at least two orders of magnitude
    assert final["summary.steps"].nunique() == 1  # same number of steps for every run
    assert (final["environment.num_train"] >= 10000).all()
    assert (final["environment.num_test"] == 10000).all()
    assert (final["config.epochs"] >= 3).all()
    for column in ("environment.git_commit", "environment.torch_version",
                   "environment.hardware.cpu", "environment.dataset_variant"):
        assert final[column].notna().all(), column
    table = summary_table(study)
    assert set(table["method"]) == {"backprop", "forward_gradient"}


def test_committed_chapter_shows_figures():
    assert len(plotly_outputs(CHAPTER)) == 4
    assert "rerun = False" in parameters_source(CHAPTER)
