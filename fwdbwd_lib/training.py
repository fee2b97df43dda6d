"""The training loop: steps, evaluation, timing, peak memory, divergence, checkpoints, records.

``train(config)`` runs one config and returns a :class:`RunResult`; ``train_sweep`` runs a list
of them. The loop does not know how a gradient is computed: it calls the configured gradient
method, which fills ``param.grad``, and then steps an ordinary ``torch.optim`` optimizer.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import logging
import math
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import fwdbwd_lib.losses  # noqa: F401  (registers cross_entropy)
import fwdbwd_lib.models  # noqa: F401  (registers the models)
from fwdbwd_lib.config import REQUIRED_KEYS, to_container
from fwdbwd_lib.data import DataSplits, load_data, resolve_data_root
from fwdbwd_lib.gradients import StepOutput, build_gradient_method, model_outputs
from fwdbwd_lib.measure import (
    PEAK_MEMORY_DEFINITION, StepTimer, measure_peak_memory, persistent_memory_mib,
)
from fwdbwd_lib.records import (
    STATUS_DIVERGED, STATUS_FAILED, STATUS_FINISHED, STATUS_RUNNING, RunRecord, atomic_torch_save,
    find_run_dirs, read_json,
)
from fwdbwd_lib.registry import datasets, losses, models, resolve_dotted_path

logger = logging.getLogger(__name__)

# The step whose peak memory is measured (0-based): the second, once optimizer state exists.
MEMORY_STEP = 1


@dataclass
class RunResult:
    """The outcome of one run: its directory, final status and summary numbers."""

    run_dir: Path
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    message: str = ""


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules (stepped once per training step)
# ---------------------------------------------------------------------------------------------

def constant_schedule(optimizer: torch.optim.Optimizer, total_steps: int = 0):
    """Return a LambdaLR that keeps the learning rate constant."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0):
    """Linear warm-up over ``warmup_steps``, then cosine decay to zero at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------
# Building the parts of a run from its config
# ---------------------------------------------------------------------------------------------

def validate_config(config: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the key and the fix for values a run cannot use."""
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(f"config lacks the keys {', '.join(missing)}")
    for key in ("epochs", "batch_size", "num_tangents", "seed", "device_id", "eval_batch_size"):
        value = config.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key} must be an integer, got {value!r}")
    if config["seed"] < 0:
        raise ValueError(f"seed must be >= 0, got {config['seed']}")
    if config["epochs"] < 0:
        raise ValueError(f"epochs must be >= 0, got {config['epochs']}; set epochs=1 or more")
    if config.get("batch_size", 1) < 1:
        raise ValueError(f"batch_size must be >= 1, got {config['batch_size']}")
    if config["num_tangents"] < 1:
        raise ValueError(f"num_tangents must be >= 1, got {config['num_tangents']}")
    clipping = config["grad_clipping"]
    if clipping is not None and (not isinstance(clipping, (int, float)) or clipping <= 0):
        raise ValueError(f"grad_clipping must be a positive max norm or null, got {clipping!r}")
    if isinstance(config.get("imports"), str):
        config["imports"] = [config["imports"]]
    if config.get("eval_every_steps", 0) < 0:
        raise ValueError(f"eval_every_steps must be >= 0, got {config['eval_every_steps']}")


def select_device(device_id: int) -> torch.device:
    """Return ``cuda:<device_id>``, or the CPU for ``-1`` or when CUDA is not available."""
    if device_id < 0:
        logger.info("device_id=%d: running on the CPU", device_id)
        return torch.device("cpu")
    if not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (device_id=%d ignored)", device_id)
        return torch.device("cpu")
    if device_id >= torch.cuda.device_count():
        raise ValueError(
            f"device_id={device_id} but only {torch.cuda.device_count()} GPUs are visible; "
            "use 0.. or -1 for the CPU"
        )
    return torch.device(f"cuda:{device_id}")


def device_id_from_name(device: str) -> int:
    """Map ``"auto"`` (GPU 0 if there is one), ``"cpu"`` or ``"cuda:N"`` to a ``device_id``."""
    if device == "auto":
        return 0 if torch.cuda.is_available() else -1
    if device == "cuda":
        return 0
    if device == "cpu":
        return -1
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise ValueError(f"invalid device {device!r}: expected 'auto', 'cpu' or 'cuda:N'")


def _call_with_accepted(builder: Callable[..., Any], defaults: dict[str, Any], kwargs: dict[str, Any]):
    """Call ``builder(**kwargs)``, adding the ``defaults`` its signature accepts."""
    parameters = inspect.signature(builder).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    merged = {k: v for k, v in defaults.items() if accepts_any or k in parameters}
    merged.update(kwargs)
    return builder(**merged)


def build_model(config: dict[str, Any], data: DataSplits) -> torch.nn.Module:
    builder = models.get(config["model_name"])
    defaults = {"num_classes": data.num_classes, **data.model_kwargs}
    try:
        return _call_with_accepted(builder, defaults, dict(config.get("model") or {}))
    except TypeError as error:
        raise ValueError(
            f"model {config['model_name']!r} rejected its keyword arguments "
            f"{dict(config.get('model') or {})}: {error}; fix the model.* values"
        ) from None


def build_loss(config: dict[str, Any]) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    name = config["loss"]
    if name in losses.names():
        return losses.get(name)
    return resolve_dotted_path(name, "loss")


def build_activation(config: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    name = config["activation"]
    if name in (None, "", "none"):
        return lambda outputs: outputs
    activation = resolve_dotted_path(name, "activation")
    try:
        accepts_dim = "dim" in inspect.signature(activation).parameters
    except (TypeError, ValueError):
        accepts_dim = False
    if accepts_dim:
        return lambda outputs: activation(outputs, dim=-1)
    return activation


def build_data(config: dict[str, Any]) -> DataSplits:
    kwargs = dict(config.get("dataset") or {})
    try:
        return load_data(config["dataset_name"], config["data_root"], **kwargs)
    except TypeError as error:
        raise ValueError(
            f"dataset {config['dataset_name']!r} rejected its keyword arguments {kwargs}: "
            f"{error}; fix the dataset.* values"
        ) from None


def check_config(config: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Validate ``config`` and resolve its names without building data or model.

    Returns the config as a plain dict. Sweeps call this for every combination before the first
    run, so that a bad value fails before hours of training.
    """
    config = to_container(config)
    config.setdefault("batch_size", 128)
    config.setdefault("eval_batch_size", 500)
    config.setdefault("eval_every_steps", 0)
    validate_config(config)
    _import_user_modules(config)
    models.get(config["model_name"])
    datasets.get(config["dataset_name"])
    build_loss(config)
    build_activation(config)
    build_gradient_method(config["method"], num_tangents=config["num_tangents"],
                          tangent=config["tangent"], seed=config["seed"])
    for group in ("optimizer", "scheduler"):
        target = (config.get(group) or {}).get("_target_")
        if not target:
            raise ValueError(f"{group}._target_ is missing: name a class, e.g. torch.optim.SGD")
        resolve_dotted_path(target, f"{group}._target_")
    return config


def build_optimizer(config: dict[str, Any], parameters: list[torch.nn.Parameter]):
    """Instantiate ``config.optimizer`` for ``parameters``, naming optimizer.* in errors."""
    try:
        return instantiate(config["optimizer"], params=parameters, _convert_="all")
    except Exception as error:  # Hydra wraps the optimizer's own TypeError/ValueError.
        cause = error.__cause__ or error
        raise ValueError(
            f"invalid optimizer settings {config['optimizer']}: {cause}; fix the optimizer.* values"
        ) from None


def build_scheduler(config: dict[str, Any], optimizer, total_steps: int):
    try:
        return instantiate(config["scheduler"], optimizer=optimizer, _convert_="all",
                           **_schedule_kwargs(config["scheduler"], total_steps))
    except Exception as error:  # Hydra wraps the scheduler's own TypeError/ValueError.
        cause = error.__cause__ or error
        raise ValueError(
            f"invalid scheduler settings {config['scheduler']}: {cause}; fix the scheduler.* values"
        ) from None


def _import_user_modules(config: dict[str, Any]) -> None:
    for module in config.get("imports") or []:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(
                f"imports lists {module!r}, which cannot be imported ({error}); check the module "
                "name and that it is on PYTHONPATH"
            ) from None


def make_loader(dataset: Dataset, batch_size: int, shuffle_seed: int | None) -> DataLoader:
    """Build a single-process DataLoader; ``shuffle_seed`` fixes the epoch's order (None: in order)."""
    generator = None
    if shuffle_seed is not None:
        generator = torch.Generator()
        generator.manual_seed(shuffle_seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None,
        drop_last=shuffle_seed is not None and len(dataset) >= batch_size,
        generator=generator,
        collate_fn=getattr(dataset, "collate_fn", None),
    )


def move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def batch_size_of(targets: Any) -> int:
    return len(targets) if hasattr(targets, "__len__") else 1


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def count_correct(scores: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """Return (correct, counted) predictions; targets < 0 (e.g. -100 padding) are not counted."""
    predictions = scores.argmax(dim=-1)
    valid = targets >= 0
    return int((predictions[valid] == targets[valid]).sum()), int(valid.sum())


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    loss_fn: Callable,
    activation: Callable,
    device: torch.device,
    batch_size: int = 500,
) -> dict[str, float]:
    """Return the mean loss and accuracy of ``model`` (in eval mode) on ``dataset``."""
    was_training = model.training
    model.eval()
    total_loss, total_examples, correct, counted = 0.0, 0, 0, 0
    for inputs, targets in make_loader(dataset, batch_size, shuffle_seed=None):
        inputs, targets = move_to_device(inputs, device), move_to_device(targets, device)
        outputs = model_outputs(model, inputs)
        examples = batch_size_of(targets)
        total_loss += float(loss_fn(outputs, targets)) * examples
        total_examples += examples
        hits, valid = count_correct(activation(outputs), targets)
        correct, counted = correct + hits, counted + valid
    model.train(was_training)
    return {
        "loss": total_loss / max(total_examples, 1),
        "accuracy": correct / max(counted, 1),
        "examples": total_examples,
    }


# ---------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def git_commit() -> dict[str, Any]:
    """Return the commit of the repository that contains this package, and whether it is dirty.

    ``git_dirty`` is true when the package or the install files have uncommitted changes.
    Executed notebooks and run records under ``book/`` do not count, because running a chapter
    changes them. The first result is kept for the life of the process, because the code that
    runs is the code imported then, even if the checkout changes later.
    """
    repository = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repository, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--",
             "fwdbwd_lib", "pyproject.toml", "requirements.txt"],
            cwd=repository, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    if commit.returncode != 0:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}


git_commit()  # Record the commit of the code as imported.


def hardware_description(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    description = {
        "device": str(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
        description["cuda"] = torch.version.cuda
    return description


def config_hash(config: dict[str, Any]) -> str:
    """Hash the config without ``resume``; resume looks for an unfinished run with this hash."""
    relevant = {k: v for k, v in config.items() if k != "resume"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _find_resumable_run(config: dict[str, Any]) -> Path | None:
    resume = config["resume"]
    if resume in (False, None, "", "false"):
        return None
    if isinstance(resume, str) and resume not in ("true", "True"):
        path = Path(resume)
        if not (path / "checkpoint.pt").is_file():
            raise ValueError(f"resume={resume!r}: no checkpoint.pt in that run directory")
        return path
    runs_dir = Path(config["runs_dir"])
    if not runs_dir.is_dir():
        return None
    expected_hash = config_hash(config)
    candidates = []
    for run_dir in find_run_dirs(runs_dir):
        environment_path = run_dir / "environment.json"
        status_path = run_dir / "status.json"
        if not (environment_path.exists() and status_path.exists()):
            continue
        if (read_json(status_path).get("status") == STATUS_RUNNING
                and read_json(environment_path).get("config_hash") == expected_hash
                and (run_dir / "checkpoint.pt").is_file()):
            candidates.append(run_dir)
    return max(candidates, key=lambda d: (d / "checkpoint.pt").stat().st_mtime, default=None)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

def train(config: DictConfig | dict[str, Any], progress: bool | None = None) -> RunResult:
    """Run one training run described by ``config`` and record it under ``config.runs_dir``.

    Invalid configs raise ``ValueError`` (or ``FileNotFoundError`` for missing data) before a
    run directory is created. A NaN or infinite loss ends the run with status "diverged"; the
    function still returns normally so that sweeps go on. ``progress`` shows a tqdm bar (None:
    only when stderr is a terminal).
    """
    # Resolve every name before anything slow runs, so a typo fails at once.
    config = check_config(config)
    device = select_device(config["device_id"])
    seed_everything(config["seed"])
    loss_fn = build_loss(config)
    activation = build_activation(config)
    method = build_gradient_method(
        config["method"], num_tangents=config["num_tangents"], tangent=config["tangent"],
        seed=config["seed"],
    )
    data = build_data(config)
    model = build_model(config, data).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(config, trainable)
    steps_per_epoch = len(make_loader(data.train, config["batch_size"], shuffle_seed=0))
    total_steps = steps_per_epoch * config["epochs"]
    scheduler = build_scheduler(config, optimizer, total_steps)

    resume_dir = _find_resumable_run(config)
    if resume_dir is not None:
        record = RunRecord(resume_dir)
        logger.info("resuming run %s", resume_dir)
    else:
        name = f"{config['dataset_name']}-{config['model_name']}-{config['method']}-s{config['seed']}"
        record = RunRecord.create(Path(config["runs_dir"]), name)
        record.write_config(OmegaConf.to_yaml(OmegaConf.create(config)))
        record.write_environment({
            "seed": config["seed"],
            "config_hash": config_hash(config),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            **git_commit(),
            "hardware": hardware_description(device),
            "dataset_variant": data.variant,
            "data_root": str(resolve_data_root(config["data_root"])),
            "num_train": len(data.train),
            "num_validation": len(data.validation),
            "num_test": len(data.test),
            "num_parameters": sum(p.numel() for p in trainable),
            "steps_per_epoch": steps_per_epoch,
            "peak_memory_definition": PEAK_MEMORY_DEFINITION,
            "peak_memory_step": MEMORY_STEP,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
    record.set_status(STATUS_RUNNING, step=0)
    logger.info("run %s: %s on %s with %s, %d parameters, device %s", record.directory.name,
                config["model_name"], config["dataset_name"], config["method"],
                sum(p.numel() for p in trainable), device)

    try:
        return _run_loop(config, record, data, model, optimizer, scheduler, method, loss_fn,
                         activation, device, steps_per_epoch, progress)
    except KeyboardInterrupt:
        logger.warning("run %s interrupted; resume=true continues it from its last checkpoint",
                       record.directory)
        raise
    except Exception as error:
        record.flush()
        record.set_status(STATUS_FAILED, message=f"{type(error).__name__}: {error}")
        raise


def _schedule_kwargs(scheduler_config: dict[str, Any], total_steps: int) -> dict[str, Any]:
    target = resolve_dotted_path(scheduler_config["_target_"], "scheduler._target_")
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    return {"total_steps": total_steps} if "total_steps" in parameters else {}


def _run_loop(config, record, data, model, optimizer, scheduler, method, loss_fn, activation,
              device, steps_per_epoch, progress) -> RunResult:
    step, start_epoch, train_time_s = 0, 0, 0.0
    checkpoint_path = record.directory / "checkpoint.pt"
    if checkpoint_path.is_file():
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _restore_rng_states(checkpoint["rng"])
        step, start_epoch = checkpoint["step"], checkpoint["epoch"]
        train_time_s = checkpoint["train_time_s"]
        record.truncate_after(step)
    wall_start = time.perf_counter() - (record.rows[-1]["wall_time_s"] if record.rows else 0.0)
    peak_memory = next((r["peak_memory_mib"] for r in record.rows if "peak_memory_mib" in r), None)

    def log_eval(split: str, epoch: int, metrics: dict[str, float]) -> None:
        record.log({"kind": "eval", "split": split, "step": step, "epoch": epoch,
                    "loss": metrics["loss"], "accuracy": metrics["accuracy"],
                    "train_time_s": train_time_s, "wall_time_s": time.perf_counter() - wall_start})

    def evaluate_on(dataset):
        return evaluate(model, dataset, loss_fn, activation, device, config["eval_batch_size"])

    if step == 0:
        log_eval("validation", 0, evaluate_on(data.validation))

    model.train()
    for epoch in range(start_epoch, config["epochs"]):
        # The shuffle order depends only on (seed, epoch), so a resumed run gets the same order.
        loader = make_loader(data.train, config["batch_size"], shuffle_seed=config["seed"] * 10007 + epoch)
        epoch_loss, epoch_examples, epoch_correct, epoch_counted = 0.0, 0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config['epochs']}", leave=False,
                   disable=(not progress) if progress is not None else None)
        for inputs, targets in bar:
            inputs, targets = move_to_device(inputs, device), move_to_device(targets, device)
            examples = batch_size_of(targets)
            lr = optimizer.param_groups[0]["lr"]

            # Gradients of the last step are freed before the step's timing and memory
            # measurement start, so the step's peak counts only what the step allocates.
            optimizer.zero_grad(set_to_none=True)

            def training_step() -> StepOutput:
                output = method(model, loss_fn, inputs, targets, step=step)
                if config["grad_clipping"] is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clipping"])
                optimizer.step()
                scheduler.step()
                return output

            row: dict[str, Any] = {"kind": "step", "step": step + 1, "epoch": epoch + 1}
            with StepTimer(device) as timer:
                if step == MEMORY_STEP or (step == 0 and steps_per_epoch * config["epochs"] == 1):
                    output, peak_memory = measure_peak_memory(training_step, device)
                    row["peak_memory_mib"] = peak_memory
                    row["profiled"] = True
                else:
                    output = training_step()
            step += 1
            train_time_s += timer.elapsed_ms / 1000.0
            loss = float(output.loss)
            row.update({"loss": loss, "lr": lr, "step_time_ms": timer.elapsed_ms,
                        "samples_per_s": examples / (timer.elapsed_ms / 1000.0),
                        "train_time_s": train_time_s,
                        "wall_time_s": time.perf_counter() - wall_start})
            record.log(row)

            if not math.isfinite(loss):
                return _mark_diverged(record, step, epoch + 1, loss)

            epoch_loss += loss * examples
            epoch_examples += examples
            hits, valid = count_correct(activation(output.outputs), targets)
            epoch_correct, epoch_counted = epoch_correct + hits, epoch_counted + valid
            bar.set_postfix(loss=f"{loss:.3f}")

            if config["eval_every_steps"] and step % config["eval_every_steps"] == 0:
                log_eval("validation", epoch + 1, evaluate_on(data.validation))

        log_eval("train", epoch + 1, {"loss": epoch_loss / max(epoch_examples, 1),
                                      "accuracy": epoch_correct / max(epoch_counted, 1)})
        if not (config["eval_every_steps"] and step % config["eval_every_steps"] == 0):
            log_eval("validation", epoch + 1, evaluate_on(data.validation))
        last = record.rows[-1]
        logger.info("epoch %d/%d: train loss %.4f, validation loss %.4f accuracy %.4f",
                    epoch + 1, config["epochs"], epoch_loss / max(epoch_examples, 1),
                    last["loss"], last["accuracy"])
        record.flush()
        atomic_torch_save(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": _rng_states(),
            "step": step, "epoch": epoch + 1, "train_time_s": train_time_s,
        })
        record.set_status(STATUS_RUNNING, step=step)

    test = evaluate_on(data.test)
    record.log({"kind": "test", "split": "test", "step": step, "epoch": config["epochs"],
                "loss": test["loss"], "accuracy": test["accuracy"], "examples": test["examples"],
                "train_time_s": train_time_s, "wall_time_s": time.perf_counter() - wall_start})
    record.flush()
    atomic_torch_save(record.directory / "model_final.pt", model.state_dict())
    summary = _summarize(record, model, optimizer, peak_memory)
    record.write_summary(summary)
    record.set_status(STATUS_FINISHED, step=step)
    logger.info("run %s finished: test accuracy %.4f, median step %.1f ms", record.directory.name,
                test["accuracy"], summary["median_step_time_ms"] or float("nan"))
    return RunResult(record.directory, STATUS_FINISHED, summary)


def _summarize(record: RunRecord, model, optimizer, peak_memory) -> dict[str, Any]:
    steps = [r for r in record.rows if r["kind"] == "step"]
    timed = [r["step_time_ms"] for r in steps if not r.get("profiled")]
    validation = [r for r in record.rows if r["kind"] == "eval" and r["split"] == "validation"]
    test = next((r for r in record.rows if r["kind"] == "test"), {})
    return {
        "steps": len(steps),
        "final_train_loss": steps[-1]["loss"] if steps else None,
        "final_validation_loss": validation[-1]["loss"] if validation else None,
        "final_validation_accuracy": validation[-1]["accuracy"] if validation else None,
        "test_loss": test.get("loss"),
        "test_accuracy": test.get("accuracy"),
        "median_step_time_ms": float(np.median(timed)) if timed else None,
        "median_samples_per_s": float(np.median([r["samples_per_s"] for r in steps
                                                 if not r.get("profiled")])) if timed else None,
        "train_time_s": steps[-1]["train_time_s"] if steps else 0.0,
        "wall_time_s": record.rows[-1]["wall_time_s"] if record.rows else 0.0,
        "peak_memory_mib": peak_memory,
        "persistent_memory_mib": persistent_memory_mib(model, optimizer),
    }


def _mark_diverged(record: RunRecord, step: int, epoch: int, loss: float) -> RunResult:
    message = (f"loss became {loss} at step {step} (epoch {epoch}); lower optimizer.lr or set "
               f"grad_clipping")
    logger.warning("run %s diverged: %s", record.directory.name, message)
    record.flush()
    record.write_summary({"steps": step, "diverged_at_step": step, "test_accuracy": None})
    record.set_status(STATUS_DIVERGED, step=step, message=message)
    return RunResult(record.directory, STATUS_DIVERGED, {"diverged_at_step": step}, message)


def train_sweep(configs, progress: bool | None = None) -> list[RunResult]:
    """Run each config in turn and return their results (diverged runs included)."""
    return [train(config, progress=progress) for config in configs]
