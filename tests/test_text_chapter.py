"""The text chapter: executed by papermill with tiny parameters on the real IMDB copy, checked
with nbval, and its committed records checked for the protocol the book states."""

from pathlib import Path

import pandas as pd
import pytest

from chapter_helpers import (
    error_outputs, execute_chapter, parameters_source, plotly_outputs, run_nbval,
)
from fwdbwd_lib.study import load_study, summary_table

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[1]
CHAPTER = REPOSITORY / "book" / "text.ipynb"
RUNS = REPOSITORY / "book" / "runs" / "text"
TINY = {
    "rerun": True, "device": "cpu", "seeds": [0, 1], "train_size": 48, "validation_size": 16,
    "test_size": 16, "max_length": 32, "vocab_size": 300, "batch_size": 16,
    "roberta_size": "tiny", "roberta_epochs": 1, "text_cnn_epochs": 1,
    "roberta_learning_rates": {"backprop": [0.001, 0.003], "forward_gradient": [0.0001, 0.001]},
    "text_cnn_learning_rates": {"backprop": [0.001, 0.003], "forward_gradient": [0.0001, 0.001]},
}
FIGURES_PER_MODEL = 4  # learning-rate grid, curves, test accuracy, cost



@pytest.fixture(scope="module")
def executed_chapter(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("text")
    parameters = {**TINY, "runs_dir": str(folder / "runs"), "data_root": str(data_root)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FWDBWD_CACHE", str(folder / "cache"))
        return execute_chapter(CHAPTER, folder / "text.ipynb", parameters)

def test_chapter_runs_with_tiny_parameters(executed_chapter):
    assert not error_outputs(executed_chapter)
    assert len(plotly_outputs(executed_chapter)) == 2 * FIGURES_PER_MODEL
    runs = executed_chapter.parent / "runs"
    for model in ("roberta", "text_cnn"):
        study = load_study(runs / model)
        final = study["final"]
        assert set(final["config.method"]) == {"backprop", "forward_gradient"}
        assert (final.groupby("config.method")["config.seed"].nunique() == 2).all()
        assert (final["environment.num_train"] == 48).all()
        assert (final["config.dataset.max_length"] == 32).all()
    check = pd.read_csv(runs / "forward_ad_check.csv")
    assert (check["status"] == "ok").all()
    assert (check["relative_error"] < 1e-3).all()


def test_chapter_passes_nbval(executed_chapter):
    """nbval re-executes the papermill output cell by cell, training its tiny runs again."""
    result = run_nbval(executed_chapter)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("model", ["roberta", "text_cnn"])
def test_committed_records_follow_the_protocol(model):
    """The records the built book shows: both methods, 3 seeds at the chosen rate, the grid."""
    study = load_study(RUNS / model)
    manifest, final = study["manifest"], study["final"]
    for method in ("backprop", "forward_gradient"):
        runs = final[final["config.method"] == method]
        assert sorted(runs["config.seed"]) == [0, 1, 2]
        assert runs["config.optimizer.lr"].nunique() == 1
        assert len(manifest["chosen"][method]["grid"]) >= 4
    assert final["summary.steps"].nunique() == 1  # the same number of steps for every run
    assert final["config.optimizer._target_"].nunique() == 1
    assert (final["environment.num_train"] >= 5000).all()
    assert (final["environment.num_test"] >= 2000).all()
    assert (final["config.dataset.max_length"] >= 256).all()
    assert (final["config.dataset.tokenizer"] == "bpe").all()
    for column in ("environment.git_commit", "environment.torch_version",
                   "environment.hardware.cpu", "environment.dataset_variant"):
        assert final[column].notna().all(), column
    assert set(summary_table(study)["method"]) == {"backprop", "forward_gradient"}


def test_committed_chapter_shows_figures():
    assert len(plotly_outputs(CHAPTER)) == 2 * FIGURES_PER_MODEL
    assert "rerun = False" in parameters_source(CHAPTER)
