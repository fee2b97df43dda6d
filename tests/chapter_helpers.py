"""Shared steps of the chapter tests: execute a notebook with papermill, read its outputs, and
re-run it under nbval."""

import json
import os
import subprocess
import sys
from pathlib import Path


def execute_chapter(chapter: Path, output: Path, parameters: dict) -> Path:
    """Execute ``chapter`` with papermill into ``output``, working in the output's folder."""
    import papermill

    papermill.execute_notebook(str(chapter), str(output), parameters=parameters,
                               cwd=str(output.parent), progress_bar=False)
    return output


def cell_outputs(notebook_path: Path) -> list[dict]:
    notebook = json.loads(Path(notebook_path).read_text())
    return [o for c in notebook["cells"] for o in c.get("outputs", [])]


def error_outputs(notebook_path: Path) -> list[dict]:
    return [o for o in cell_outputs(notebook_path) if o["output_type"] == "error"]


def plotly_outputs(notebook_path: Path) -> list[str]:
    """Return the HTML outputs that contain a Plotly figure."""
    return [o["data"]["text/html"] for o in cell_outputs(notebook_path)
            if "text/html" in o.get("data", {}) and "plotly" in "".join(o["data"]["text/html"])]


def parameters_source(notebook_path: Path) -> str:
    notebook = json.loads(Path(notebook_path).read_text())
    cell = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    return "".join(cell["source"])


def run_nbval(notebook_path: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Re-execute an executed notebook cell by cell under nbval (lax: outputs not compared)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
         str(notebook_path)],
        cwd=Path(notebook_path).parent, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ),
    )
