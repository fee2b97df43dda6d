"""The speech chapter: executed by papermill with tiny parameters on the real FSDD and TIMIT-sample
copies, checked with nbval, and its committed records checked for the protocol the book states."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

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


def _plotly_outputs(notebook: dict) -> list:
    return [o["data"]["text/html"] for c in notebook["cells"] for o in c.get("outputs", [])
            if "text/html" in o.get("data", {}) and "plotly" in "".join(o["data"]["text/html"])]


@pytest.fixture(scope="module")
def executed_chapter(tmp_path_factory, data_root):
    import papermill

    folder = tmp_path_factory.mktemp("speech")
    output = folder / "speech.ipynb"
    parameters = {**TINY, "runs_dir": str(folder / "runs"), "data_root": str(data_root)}
    papermill.execute_notebook(str(CHAPTER), str(output), parameters=parameters,
                               cwd=str(folder), progress_bar=False)
    return output


def test_chapter_runs_with_tiny_parameters(executed_chapter):
    notebook = json.loads(executed_chapter.read_text())
    errors = [o for c in notebook["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors
    assert len(_plotly_outputs(notebook)) == 2 * FIGURES_PER_TASK

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
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
         str(executed_chapter)],
        cwd=executed_chapter.parent, capture_output=True, text=True, timeout=900,
        env=dict(os.environ),
    )
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
    notebook = json.loads(CHAPTER.read_text())
    assert len(_plotly_outputs(notebook)) == 2 * FIGURES_PER_TASK
    parameters = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert "rerun = False" in "".join(parameters["source"])
