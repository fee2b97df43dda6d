"""The training loop, run records, sweeps and input errors, on tiny generated data."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fwdbwd_lib.config import compose_config, compose_sweep, expand_sweep, shipped_config
from fwdbwd_lib.data import DataSplits
from fwdbwd_lib.records import RunRecord, atomic_write_json, load_runs, read_json
from fwdbwd_lib.registry import register_dataset, register_model, resolve_dotted_path
from fwdbwd_lib.training import train


@register_dataset("tiny_blobs")
def load_tiny_blobs(root: Path, size: int = 96, seed: int = 0) -> DataSplits:
    """Three Gaussian blobs in 4 dimensions: a learnable toy problem for loop tests."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 4, generator=generator) * 3

    def split(count):
        labels = torch.randint(0, 3, (count,), generator=generator)
        return TensorDataset(centers[labels] + torch.randn(count, 4, generator=generator), labels)

    return DataSplits(split(size), split(48), split(48), num_classes=3,
                      model_kwargs={"num_features": 4}, variant="generated blobs")


@register_model("tiny_mlp")
def build_tiny_mlp(num_classes: int, num_features: int, hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(num_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))


@register_model("nan_model")
def build_nan_model(num_classes: int, num_features: int) -> nn.Module:
    class NanAfterFirstStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(num_features, num_classes)
            self.calls = 0

        def forward(self, inputs):
            self.calls += 1
            outputs = self.linear(inputs)
            return outputs * math.nan if self.calls > 3 else outputs

    return NanAfterFirstStep()


def tiny_config(tmp_path, **changes):
    overrides = [
        "dataset_name=tiny_blobs", "model_name=tiny_mlp", "~dataset", "+dataset.size=96",
        "batch_size=16", "device_id=-1", f"runs_dir={tmp_path / 'runs'}", "epochs=2",
        "optimizer.lr=0.1",
    ] + [f"{k}={v}" for k, v in changes.items()]
    return compose_config(shipped_config(), overrides)


def test_run_writes_complete_record(tmp_path):
    result = train(tiny_config(tmp_path))
    assert result.status == "finished"
    run_dir = result.run_dir
    for name in ("config.yaml", "environment.json", "status.json", "metrics.jsonl",
                 "summary.json", "checkpoint.pt", "model_final.pt"):
        assert (run_dir / name).is_file(), name
    environment = read_json(run_dir / "environment.json")
    assert environment["torch_version"] == torch.__version__
    assert environment["dataset_variant"] == "generated blobs"
    assert environment["hardware"]["device"] == "cpu"
    assert "git_commit" in environment
    assert "peak_memory_definition" in environment
    summary = read_json(run_dir / "summary.json")
    assert summary["steps"] == 12  # 96 examples / batch 16 × 2 epochs
    assert summary["peak_memory_mib"] > 0
    assert summary["test_accuracy"] > 0.6
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    kinds = {row["kind"] for row in rows}
    assert kinds == {"step", "eval", "test"}
    step_row = next(row for row in rows if row["kind"] == "step")
    for key in ("loss", "lr", "step_time_ms", "samples_per_s", "train_time_s", "wall_time_s"):
        assert key in step_row, key
    assert not list(run_dir.glob(".*.tmp"))


def test_forward_gradient_run_learns(tmp_path):
    result = train(tiny_config(tmp_path, method="forward_gradient", epochs=6, num_tangents=4,
                               **{"optimizer.lr": 0.02}))
    assert result.status == "finished"
    assert result.summary["test_accuracy"] > 0.5


def test_second_run_never_overwrites_first(tmp_path):
    first = train(tiny_config(tmp_path))
    second = train(tiny_config(tmp_path))
    assert first.run_dir != second.run_dir
    assert read_json(first.run_dir / "status.json")["status"] == "finished"
    assert len(load_runs(tmp_path / "runs")) == 2


def test_nan_loss_marks_run_diverged(tmp_path):
    result = train(tiny_config(tmp_path, model_name="nan_model"))
    assert result.status == "diverged"
    status = read_json(result.run_dir / "status.json")
    assert status["status"] == "diverged"
    assert status["step"] == 3  # calls 1-3 are finite: validation at step 0 is call 1
    assert "lower optimizer.lr" in status["message"]
    assert not (result.run_dir / "model_final.pt").exists()


def test_resume_continues_from_checkpoint(tmp_path, monkeypatch):
    """A run killed after its first epoch resumes and ends where an unbroken run ends."""
    reference = train(tiny_config(tmp_path / "reference", epochs=3, **{"dataset.size": 64}))

    # Interrupt the same run during epoch 2 (4 steps per epoch), then resume it.
    calls = {"count": 0}
    import fwdbwd_lib.gradients as gradients

    original = gradients.Backprop.__call__

    def failing_call(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 6:  # epoch 2 of 4 steps per epoch
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(gradients.Backprop, "__call__", failing_call)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(tmp_path / "killed", epochs=3, **{"dataset.size": 64}))
    killed_dir = next((tmp_path / "killed" / "runs").iterdir())
    assert read_json(killed_dir / "status.json")["status"] == "running"

    resumed = train(tiny_config(tmp_path / "killed", epochs=3, resume="true", **{"dataset.size": 64}))
    assert resumed.run_dir == killed_dir
    assert resumed.status == "finished"
    final = torch.load(killed_dir / "model_final.pt")
    expected = torch.load(reference.run_dir / "model_final.pt")
    for name in expected:
        assert torch.allclose(final[name], expected[name], atol=1e-6), name
    steps = [r["step"] for r in RunRecord(killed_dir).rows if r["kind"] == "step"]
    assert steps == list(range(1, 13))


def test_sweep_writes_one_record_per_combination(tmp_path):
    base = ["dataset_name=tiny_blobs", "model_name=tiny_mlp", "~dataset", "+dataset.size=32",
            "batch_size=16", "device_id=-1", f"runs_dir={tmp_path / 'runs'}", "epochs=1"]
    configs = compose_sweep(shipped_config(), base + ["method=backprop,forward_gradient",
                                                      "seed=0,1", "optimizer.lr=0.1,0.01"])
    assert len(configs) == 8
    for config in configs:
        train(config)
    runs = load_runs(tmp_path / "runs")
    assert len(runs) == 8
    combinations = set(zip(runs["config.method"], runs["config.seed"], runs["config.optimizer.lr"]))
    assert len(combinations) == 8
    steps = load_runs(tmp_path / "runs", metrics="step")
    assert set(steps["run_id"]) == set(runs["run_id"])


def test_expand_sweep_product():
    combos = expand_sweep(["method=backprop,forward_gradient", "seed=0,1,2", "epochs=3"])
    assert len(combos) == 6
    assert all("epochs=3" in combo for combo in combos)


@pytest.mark.parametrize("override, message", [
    ("model_name=no_such_model", "unknown model 'no_such_model'"),
    ("dataset_name=no_such_data", "unknown dataset 'no_such_data'"),
    ("loss=torch.nn.functional.no_such_loss", "has no attribute 'no_such_loss'"),
    ("activation=no_such_package.softmax", "module 'no_such_package' cannot be imported"),
    ("epochs=-1", "epochs must be >= 0"),
    ("method=sideways", "unknown gradient method 'sideways'"),
])
def test_bad_input_raises_clear_error(tmp_path, override, message):
    config = compose_config(shipped_config(), [
        "device_id=-1", f"runs_dir={tmp_path / 'runs'}", "data_root=/nonexistent", override])
    with pytest.raises(ValueError, match=message):
        train(config)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_data_root_names_setting(tmp_path):
    config = compose_config(shipped_config(), [
        "device_id=-1", f"runs_dir={tmp_path / 'runs'}", f"data_root={tmp_path / 'empty'}"])
    with pytest.raises(FileNotFoundError, match="FWDBWD_DATA") as error:
        train(config)
    assert "cifar10/{train,test}/<class>" in str(error.value)
    assert not (tmp_path / "runs").exists()


def test_resolve_dotted_path():
    assert resolve_dotted_path("torch.nn.functional.softmax") is torch.nn.functional.softmax
    with pytest.raises(ValueError, match="expected 'package.module.name'"):
        resolve_dotted_path("softmax")


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "value.json"
    atomic_write_json(target, {"a": 1})

    class Unserializable:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_json(target, {"a": Unserializable()})
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["value.json"]


def test_user_config_dir_groups_are_found(tmp_path):
    """Group files in configs/ beside a user's config win over the package's."""
    (tmp_path / "configs" / "optimizer").mkdir(parents=True)
    (tmp_path / "configs" / "optimizer" / "mine.yaml").write_text(
        "_target_: torch.optim.SGD\nlr: 0.123\nmomentum: 0.0\n")
    user_config = tmp_path / "my_run.yaml"
    user_config.write_text(shipped_config().read_text().replace("optimizer: default", "optimizer: mine"))
    config = compose_config(user_config, [])
    assert config.optimizer.lr == 0.123
    assert config.scheduler._target_ == "fwdbwd_lib.training.constant_schedule"


def test_zero_epochs_evaluates_untrained_model(tmp_path):
    result = train(tiny_config(tmp_path, epochs=0))
    assert result.status == "finished"
    assert result.summary["steps"] == 0
    assert result.summary["peak_memory_mib"] is None
    assert 0.0 <= result.summary["test_accuracy"] <= 1.0


def test_data_root_precedence(tmp_path, monkeypatch):
    from fwdbwd_lib.data import DEFAULT_DATA_ROOT, resolve_data_root

    monkeypatch.setenv("FWDBWD_DATA", str(tmp_path / "from_env"))
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_root(None) == tmp_path / "from_env"
    monkeypatch.delenv("FWDBWD_DATA")
    assert resolve_data_root(None) == DEFAULT_DATA_ROOT


def test_seed_and_optimizer_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="seed must be >= 0"):
        train(tiny_config(tmp_path, seed=-1))
    with pytest.raises(ValueError, match="fix the optimizer.\\* values"):
        train(tiny_config(tmp_path, **{"optimizer.lr": -1}))
    assert not (tmp_path / "runs").exists()


def test_load_runs_rejects_unknown_metrics_kind(tmp_path):
    train(tiny_config(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="'steps'"):
        load_runs(tmp_path / "runs", metrics="steps")


def test_diverged_metrics_are_strict_json(tmp_path):
    result = train(tiny_config(tmp_path, model_name="nan_model"))
    rows = [json.loads(line, parse_constant=lambda token: pytest.fail(f"non-JSON {token}"))
            for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] is None


def test_cpu_peak_memory_is_step_local():
    from fwdbwd_lib.measure import measure_peak_memory

    def allocate():
        block = torch.ones(4 * 2**20)  # 16 MiB of float32, freed on return
        del block
        return torch.ones(2 * 2**20)  # 8 MiB, alive at the end

    preexisting = torch.ones(8 * 2**20)  # allocated before the call: not counted
    _, peak = measure_peak_memory(allocate, torch.device("cpu"))
    assert 15.9 < peak < 16.5
    del preexisting


def test_study_trains_anew_unless_asked_to_reuse(tmp_path):
    from fwdbwd_lib.study import StudyPlan, run_study

    plan = StudyPlan(
        config_path=str(shipped_config()),
        overrides=["dataset_name=tiny_blobs", "model_name=tiny_mlp", "~dataset", "+dataset.size=32",
                   "batch_size=16", "device_id=-1", "epochs=1"],
        grids={"backprop": [0.01, 0.1]}, seeds=[0, 1], max_extensions=0,
    )
    first = run_study(plan, tmp_path / "runs")
    assert len({row["run_dir"] for row in first["final"]} | {row["run_dir"] for row in first["tuning"]}) == 3
    second = run_study(plan, tmp_path / "runs")
    assert {row["run_dir"] for row in second["final"]}.isdisjoint(row["run_dir"] for row in first["final"])
    third = run_study(plan, tmp_path / "runs", reuse_existing=True)
    assert {row["run_dir"] for row in third["final"]} <= {
        row["run_dir"] for row in first["final"] + second["final"]}


def test_study_breaks_accuracy_ties_by_validation_loss(tmp_path, monkeypatch):
    """Equal validation accuracies (a model predicting one class) go to the lower loss."""
    import fwdbwd_lib.study as study

    outcomes = {0.1: (0.5, 0.99), 0.3: (0.5, 0.70), 1.0: (0.5, 0.80), 3.0: (None, None)}

    def fake_run(config, existing):
        lr = config["optimizer"]["lr"]
        run_dir = tmp_path / f"lr{lr}-seed{config['seed']}"
        run_dir.mkdir(exist_ok=True)
        accuracy, loss = outcomes[lr]
        status = "finished" if accuracy is not None else "diverged"
        (run_dir / "status.json").write_text(json.dumps({"status": status}))
        (run_dir / "summary.json").write_text(json.dumps(
            {"final_validation_accuracy": accuracy, "final_validation_loss": loss}))
        return run_dir

    monkeypatch.setattr(study, "_run_or_reuse", fake_run)
    monkeypatch.setattr(study, "load_runs", lambda *args, **kwargs: None)
    plan = study.StudyPlan(config_path=str(shipped_config()), overrides=["device_id=-1"],
                           grids={"forward_gradient": [0.1, 0.3, 1.0, 3.0]}, seeds=[0])
    manifest = study.run_study(plan, tmp_path / "runs")
    assert manifest["chosen"]["forward_gradient"]["lr"] == 0.3
    assert manifest["chosen"]["forward_gradient"]["at_edge"] is None


def test_study_does_not_extend_an_undecided_grid(tmp_path, monkeypatch):
    """A grid where every rate scores the same accuracy is reported, not extended."""
    import fwdbwd_lib.study as study

    def fake_run(config, existing):
        lr = config["optimizer"]["lr"]
        run_dir = tmp_path / f"lr{lr}-seed{config['seed']}"
        run_dir.mkdir(exist_ok=True)
        (run_dir / "status.json").write_text(json.dumps({"status": "finished"}))
        (run_dir / "summary.json").write_text(json.dumps(
            {"final_validation_accuracy": 0.5, "final_validation_loss": 0.69 + lr}))
        return run_dir

    monkeypatch.setattr(study, "_run_or_reuse", fake_run)
    plan = study.StudyPlan(config_path=str(shipped_config()), overrides=["device_id=-1"],
                           grids={"forward_gradient": [0.1, 0.3, 1.0]}, seeds=[0])
    chosen = study.run_study(plan, tmp_path / "runs")["chosen"]["forward_gradient"]
    assert chosen["lr"] == 0.1
    assert chosen["at_edge"] == "low"
    assert chosen["undecided"] is True
    assert chosen["extensions"] == 0
