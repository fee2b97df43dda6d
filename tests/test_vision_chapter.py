"""The vision chapter: executed by papermill with tiny parameters on the real CIFAR-10 copy,
checked with nbval, and its committed records checked for the protocol the book states."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    import papermill

    folder = tmp_path_factory.mktemp("vision")
    output = folder / "vision.ipynb"
    parameters = {**TINY, "runs_dir": str(folder / "runs"), "data_root": str(data_root)}
    papermill.execute_notebook(str(CHAPTER), str(output), parameters=parameters,
                               cwd=str(folder), progress_bar=False)
    return output


def test_chapter_runs_with_tiny_parameters(executed_chapter):
    notebook = json.loads(executed_chapter.read_text())
    errors = [o for c in notebook["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors
    html = [o["data"]["text/html"] for c in notebook["cells"] for o in c.get("outputs", [])
            if "text/html" in o.get("data", {}) and "plotly" in "".join(o["data"]["text/html"])]
    assert len(html) == 4  # learning-rate grid, curves, test accuracy, cost

    study = load_study(executed_chapter.parent / "runs")
    final = study["final"]
    assert set(final["config.method"]) == {"backprop", "forward_gradient"}
    assert (final.groupby("config.method")["config.seed"].nunique() == 2).all()
    assert len(study["tuning"]) >= 4
    assert (final["environment.num_train"] == 256).all()
    assert (final["config.epochs"] == 1).all()


def test_chapter_passes_nbval(executed_chapter):
    """nbval re-executes the papermill output cell by cell, training its tiny runs again."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
         str(executed_chapter)],
        cwd=executed_chapter.parent, capture_output=True, text=True, timeout=900,
        env=dict(os.environ),
    )
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
    notebook = json.loads(CHAPTER.read_text())
    html = [o["data"]["text/html"] for c in notebook["cells"] for o in c.get("outputs", [])
            if "text/html" in o.get("data", {}) and "plotly" in "".join(o["data"]["text/html"])]
    assert len(html) == 4
    parameters = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert "rerun = False" in "".join(parameters["source"])
