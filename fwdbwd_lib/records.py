"""Run records: one directory per run, written atomically, read back as pandas tables.

Record format (every file is written to a temporary name and renamed into place, so a killed
run never leaves a half-written file)::

    <runs_dir>/<run_id>/
        config.yaml        the resolved config of the run
        environment.json   seed, git commit, torch version, hardware, dataset variant,
                           parameter count, memory definition
        status.json        {"status": "running" | "finished" | "diverged" | "failed",
                            "step": ..., "message": ..., "updated": ...}
        metrics.jsonl      one JSON object per line; "kind" is "step", "eval" or "test"
        summary.json       final numbers (written when the run ends)
        checkpoint.pt      model, optimizer, scheduler and RNG states at the last epoch end
        model_final.pt     the final model state_dict

Metric rows of kind "step" carry ``step, epoch, loss, lr, step_time_ms, samples_per_s,
train_time_s`` (cumulative time inside training steps) and ``wall_time_s`` (since the run
started, evaluation included). Rows of kind "eval" carry ``step, epoch, split`` ("train" or
"validation"), ``loss, accuracy`` and the two times. The "test" row holds the final test metrics.

A run that was killed keeps status "running" (and its last checkpoint) until ``resume=true``
continues it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml

STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: Path, value: Any) -> None:
    import torch

    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        torch.save(value, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Writing one run
# ---------------------------------------------------------------------------------------------

class RunRecord:
    """The record directory of one run, and the in-memory metric rows not yet flushed."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.rows: list[dict[str, Any]] = []
        metrics = self.directory / "metrics.jsonl"
        if metrics.exists():
            self.rows = read_jsonl(metrics)

    @classmethod
    def create(cls, runs_dir: Path, name: str) -> "RunRecord":
        """Create a new, never-before-used run directory ``<runs_dir>/<time>-<name>-<id>``."""
        runs_dir = Path(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        directory = runs_dir / f"{stamp}-{name}-{uuid.uuid4().hex[:6]}"
        directory.mkdir(exist_ok=False)
        return cls(directory)

    def write_config(self, config_yaml: str) -> None:
        atomic_write_text(self.directory / "config.yaml", config_yaml)

    def write_environment(self, environment: dict[str, Any]) -> None:
        atomic_write_json(self.directory / "environment.json", environment)

    def set_status(self, status: str, step: int | None = None, message: str = "") -> None:
        atomic_write_json(
            self.directory / "status.json",
            {"status": status, "step": step, "message": message, "updated": _now(),
             "pid": os.getpid()},
        )

    def status(self) -> dict[str, Any]:
        return read_json(self.directory / "status.json")

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        """Rewrite metrics.jsonl with every row so far, atomically."""
        text = "".join(json.dumps(_finite(row), default=float, allow_nan=False) + "\n"
                       for row in self.rows)
        atomic_write_text(self.directory / "metrics.jsonl", text)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (used when a run resumes from a checkpoint)."""
        self.rows = [row for row in self.rows if row.get("step", 0) <= step]
        self.flush()

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.directory / "summary.json", summary)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN or infinity; a diverged step's loss is written as null and its status
    # message keeps the value.
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ---------------------------------------------------------------------------------------------
# Reading many runs
# ---------------------------------------------------------------------------------------------

def find_run_dirs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Return every run directory (a folder with a config.yaml) at or below ``paths``."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found = []
    for path in map(Path, paths):
        if (path / "config.yaml").is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p.parent for p in path.rglob("config.yaml"))
        else:
            raise FileNotFoundError(f"no run records at {path}: the folder does not exist")
    return found


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list):
        out[prefix] = json.dumps(value)
    else:
        out[prefix] = value


def _run_row(directory: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": directory.name, "run_dir": str(directory)}
    with open(directory / "config.yaml", encoding="utf-8") as handle:
        _flatten("config", yaml.safe_load(handle) or {}, row)
    for name in ("environment", "summary"):
        path = directory / f"{name}.json"
        if path.exists():
            _flatten(name, read_json(path), row)
    status_path = directory / "status.json"
    status = read_json(status_path) if status_path.exists() else {}
    row["status"] = status.get("status", "unknown")
    row["status_step"] = status.get("step")
    row["status_message"] = status.get("message", "")
    return row


def load_runs(paths, metrics: str | None = None) -> pd.DataFrame:
    """Load run records under ``paths`` (a folder, a run directory, or a list of them).

    With ``metrics=None`` the result has one row per run: ``run_id``, ``run_dir``, ``status``,
    the flattened config (``config.method``, ``config.optimizer.lr``, ...), environment
    (``environment.git_commit``, ...) and summary (``summary.test_accuracy``, ...).
    With ``metrics="step"``, ``"eval"`` or ``"test"`` the result is long-form: one row per
    metric row of that kind, joined with its run's columns.
    """
    if metrics not in (None, "step", "eval", "test"):
        raise ValueError(f"metrics must be None, 'step', 'eval' or 'test', got {metrics!r}")
    runs = pd.DataFrame([_run_row(d) for d in find_run_dirs(paths)])
    if metrics is None or runs.empty:
        return runs
    frames = []
    for run_dir in runs["run_dir"]:
        path = Path(run_dir) / "metrics.jsonl"
        if path.exists():
            rows = [row for row in read_jsonl(path) if row.get("kind") == metrics]
            if rows:
                frame = pd.DataFrame(rows)
                frame["run_dir"] = run_dir
                frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(runs.columns) + ["kind", "step"])
    return pd.concat(frames, ignore_index=True).merge(runs, on="run_dir", how="left")
