"""The comparison protocol shared by the book's chapters.

For each gradient method:

1. Train once per learning rate of the method's grid (seed ``tuning_seed``) and score each run
   by its final validation accuracy, ties broken by the lower final validation loss (a model
   still predicting one class everywhere scores the majority share at every rate, while its
   loss shows which rate made progress); a diverged run scores lowest.
2. While the best rate sits at an edge of the grid, extend the grid one step further on that
   side (same ratio as the neighbouring points), up to ``max_extensions`` times. A grid whose
   rates all give the same validation accuracy is not extended, and the manifest marks the
   choice ``undecided``.
3. Train the chosen rate with every seed in ``seeds``. The tuning run of the chosen rate is
   reused as the run of ``tuning_seed``, since its config is identical.

Finished runs already on disk are reused only with ``reuse_existing=True`` (to continue an
interrupted study); by default every run of a study is trained anew.

Every method gets the same optimizer, batch size and number of steps; only the learning rate
differs. The manifest ``<runs_dir>/study.json`` lists which runs played which role, so a chapter
reads exactly the runs of its last study even when the folder contains older ones.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fwdbwd_lib.config import compose_config, to_container
from fwdbwd_lib.records import (
    STATUS_FINISHED, atomic_write_json, find_run_dirs, load_runs, read_json,
)
from fwdbwd_lib.training import config_hash, train

logger = logging.getLogger(__name__)

MANIFEST = "study.json"


@dataclass
class StudyPlan:
    """Study definition: a config, shared overrides and a learning-rate grid per method."""

    config_path: str
    overrides: list[str]
    grids: dict[str, list[float]]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tuning_seed: int = 0
    max_extensions: int = 2
    # Overrides per method on top of the shared ones, e.g. {"forward_gradient": ["num_tangents=4"]}.
    method_overrides: dict[str, list[str]] = field(default_factory=dict)


def _config_for(plan: StudyPlan, runs_dir: Path, method: str, lr: float, seed: int) -> dict[str, Any]:
    overrides = [*plan.overrides, *plan.method_overrides.get(method, []), f"method={method}",
                 f"optimizer.lr={lr!r}", f"seed={seed}", f"runs_dir={runs_dir}"]
    return to_container(compose_config(plan.config_path, overrides))


def _finished_runs_by_hash(runs_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if not runs_dir.is_dir():
        return found
    for run_dir in find_run_dirs(runs_dir):
        status_path, environment_path = run_dir / "status.json", run_dir / "environment.json"
        if not (status_path.exists() and environment_path.exists()):
            continue
        if read_json(status_path).get("status") in (STATUS_FINISHED, "diverged"):
            found[read_json(environment_path)["config_hash"]] = run_dir
    return found


def _run_or_reuse(config: dict[str, Any], existing: dict[str, Path]) -> Path:
    """Return the run directory of ``config``: an earlier finished run of it, or a new run."""
    key = config_hash(config)
    if key in existing:
        logger.info("reusing %s", existing[key])
        return existing[key]
    result = train(config, progress=False)
    existing[key] = result.run_dir
    return result.run_dir


def _score(run_dir: Path) -> tuple[float, float]:
    """Return (final validation accuracy, minus final validation loss); higher is better."""
    status = read_json(run_dir / "status.json")["status"]
    if status != STATUS_FINISHED:
        return (-math.inf, -math.inf)
    summary = read_json(run_dir / "summary.json")
    accuracy, loss = summary.get("final_validation_accuracy"), summary.get("final_validation_loss")
    if accuracy is None:
        return (-math.inf, -math.inf)
    return (accuracy, -math.inf if loss is None or not math.isfinite(loss) else -loss)


def _extend(grid: list[float], side: str) -> float:
    ordered = sorted(grid)
    if side == "low":
        ratio = ordered[1] / ordered[0] if len(ordered) > 1 else 10.0
        return ordered[0] / ratio
    ratio = ordered[-1] / ordered[-2] if len(ordered) > 1 else 10.0
    return ordered[-1] * ratio


def run_study(plan: StudyPlan, runs_dir: str | Path, reuse_existing: bool = False) -> dict[str, Any]:
    """Train every run of ``plan`` under ``runs_dir`` and write the study's manifest.

    With ``reuse_existing``, a finished or diverged run of an identical config already in
    ``runs_dir`` is used in place of a new one.
    """
    runs_dir = Path(runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    existing = _finished_runs_by_hash(runs_dir) if reuse_existing else {}
    tuning, final, chosen = [], [], {}

    for method, grid in plan.grids.items():
        if len(grid) < 2:
            raise ValueError(f"the learning-rate grid of {method} needs at least 2 values, got {grid}")
        grid = sorted(float(lr) for lr in grid)
        scores: dict[float, tuple[float, float]] = {}
        extensions = 0
        while True:
            for lr in grid:
                if lr not in scores:
                    run_dir = _run_or_reuse(_config_for(plan, runs_dir, method, lr, plan.tuning_seed), existing)
                    scores[lr] = _score(run_dir)
                    tuning.append({"method": method, "lr": lr, "seed": plan.tuning_seed,
                                   "run_dir": run_dir.name, "score": scores[lr][0],
                                   "validation_loss": -scores[lr][1]})
            best = max(grid, key=lambda lr: scores[lr])
            at_edge = None
            if best == grid[0]:
                at_edge = "low"
            elif best == grid[-1]:
                at_edge = "high"
            # When every rate gives the same validation accuracy, none has changed a prediction
            # and the loss differences that break the tie are too small to steer an extension.
            undecided = len({scores[lr][0] for lr in grid}) == 1
            if (at_edge is None or undecided or extensions >= plan.max_extensions
                    or math.isinf(scores[best][0])):
                break
            logger.info("%s: best rate %g is at the %s edge of the grid; extending", method, best, at_edge)
            grid = sorted(grid + [_extend(grid, at_edge)])
            extensions += 1
        chosen[method] = {"lr": best, "grid": grid, "extensions": extensions,
                          "at_edge": at_edge, "undecided": undecided}

        for seed in plan.seeds:
            run_dir = _run_or_reuse(_config_for(plan, runs_dir, method, best, seed), existing)
            final.append({"method": method, "lr": best, "seed": seed, "run_dir": run_dir.name})

    manifest = {
        "plan": asdict(plan),
        "chosen": chosen,
        "tuning": tuning,
        "final": final,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(runs_dir / MANIFEST, manifest)
    return manifest


def load_study(runs_dir: str | Path) -> dict[str, Any]:
    """Read the manifest of the last study in ``runs_dir`` and its runs as DataFrames.

    Returns a dict with the manifest (``"manifest"``), the tuning runs (``"tuning"``), the final
    runs (``"final"``: one row per run, config and summary columns), and the final runs' metric
    rows of kind step (``"steps"``), eval (``"evals"``) and test (``"tests"``).
    """
    runs_dir = Path(runs_dir)
    path = runs_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no study manifest at {path}: run the chapter with rerun=True to create it"
        )
    manifest = read_json(path)
    tuning_dirs = [runs_dir / row["run_dir"] for row in manifest["tuning"]]
    final_dirs = list(dict.fromkeys(runs_dir / row["run_dir"] for row in manifest["final"]))
    tuning = load_runs(tuning_dirs)
    return {
        "manifest": manifest,
        "tuning": tuning,
        "final": load_runs(final_dirs),
        "steps": load_runs(final_dirs, metrics="step"),
        "evals": load_runs(final_dirs, metrics="eval"),
        "tests": load_runs(final_dirs, metrics="test"),
    }


def summary_table(study: dict[str, Any]) -> pd.DataFrame:
    """Per method: chosen rate, seeds, test accuracy mean ± std, median step time, peak memory."""
    final = study["final"]
    rows = []
    for method, runs in final.groupby("config.method", sort=False):
        finished = runs[runs["status"] == STATUS_FINISHED]
        rows.append({
            "method": method,
            "learning rate": runs["config.optimizer.lr"].iloc[0],
            "seeds": len(runs),
            "diverged": int((runs["status"] == "diverged").sum()),
            "test accuracy mean": finished["summary.test_accuracy"].mean(),
            "test accuracy std": finished["summary.test_accuracy"].std(ddof=1),
            "median step time (ms)": finished["summary.median_step_time_ms"].median(),
            "peak memory (MiB)": finished["summary.peak_memory_mib"].median(),
            "training time (s)": finished["summary.train_time_s"].mean(),
        })
    return pd.DataFrame(rows)
