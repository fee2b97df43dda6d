"""The command lines on the real CIFAR-10 copy, run as a user runs them (subprocesses)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fwdbwd_lib.config import shipped_config
from fwdbwd_lib.records import load_runs, read_json

pytestmark = pytest.mark.slow

SMALL = ["dataset.train_size=384", "dataset.validation_size=128", "dataset.test_size=256",
         "batch_size=64", "device_id=-1"]


def run_cli(module, *args, env_data_root=None, timeout=300):
    env = dict(os.environ)
    if env_data_root is not None:
        env["FWDBWD_DATA"] = str(env_data_root)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("method, lr", [("backprop", 0.01), ("forward_gradient", 0.0003)])
def test_train_cli_writes_complete_record(tmp_path, data_root, method, lr):
    result = run_cli("fwdbwd_lib.train", "--config_path", shipped_config(), *SMALL,
                     f"method={method}", f"optimizer.lr={lr}", f"runs_dir={tmp_path}",
                     env_data_root=data_root)
    assert result.returncode == 0, result.stderr
    assert "finished" in result.stdout
    runs = load_runs(tmp_path)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "finished"
    assert run["config.method"] == method
    assert run["environment.num_train"] == 384
    assert run["environment.num_test"] == 256
    assert "class-folder copy (jpg)" in run["environment.dataset_variant"]
    assert run["summary.steps"] == 6
    assert 0.0 <= run["summary.test_accuracy"] <= 1.0
    assert run["summary.peak_memory_mib"] > 0

    evaluated = run_cli("fwdbwd_lib.evaluate", run["run_dir"], env_data_root=data_root)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert abs(metrics["accuracy"] - run["summary.test_accuracy"]) < 1e-9


def test_killed_cli_run_resumes(tmp_path, data_root):
    """SIGKILL after the first checkpoint, then resume=true finishes the same run directory."""
    args = ["-m", "fwdbwd_lib.train", "--config_path", str(shipped_config()), *SMALL,
            "epochs=3", f"runs_dir={tmp_path}"]
    env = dict(os.environ, FWDBWD_DATA=str(data_root))
    process = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    checkpoints = []
    while time.time() < deadline and not checkpoints and process.poll() is None:
        checkpoints = list(tmp_path.glob("*/checkpoint.pt"))
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoints, "the run ended or timed out before writing its first checkpoint"
    run_dir = checkpoints[0].parent
    status = read_json(run_dir / "status.json")["status"]
    if status == "finished":
        pytest.skip("the run finished before the kill; nothing to resume")
    assert status == "running"

    resumed = subprocess.run([sys.executable, *args, "resume=true"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert str(run_dir.name) in resumed.stdout
    assert len(list(tmp_path.iterdir())) == 1
    assert read_json(run_dir / "status.json")["status"] == "finished"
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert steps == list(range(1, 19))  # 384 / 64 = 6 steps per epoch, 3 epochs, no repeats


def test_cli_sweep_writes_one_record_per_combination(tmp_path, data_root):
    result = run_cli("fwdbwd_lib.train", "--config_path", shipped_config(), *SMALL,
                     "dataset.train_size=128", "method=backprop,forward_gradient", "seed=0,1",
                     f"runs_dir={tmp_path}", "--quiet", env_data_root=data_root)
    assert result.returncode == 0, result.stderr
    runs = load_runs(tmp_path)
    assert len(runs) == 4
    assert set(zip(runs["config.method"], runs["config.seed"])) == {
        ("backprop", 0), ("backprop", 1), ("forward_gradient", 0), ("forward_gradient", 1)}


def test_cli_diverged_run_exits_nonzero(tmp_path, data_root):
    result = run_cli("fwdbwd_lib.train", "--config_path", shipped_config(), *SMALL,
                     "method=forward_gradient", "optimizer.lr=1000", "dataset.train_size=640",
                     f"runs_dir={tmp_path}", "--quiet", env_data_root=data_root)
    assert result.returncode == 1, result.stdout + result.stderr
    summary_lines = [line for line in result.stderr.splitlines() if line.startswith("diverged ")]
    assert len(summary_lines) == 1
    assert "lower optimizer.lr" in summary_lines[0]
    assert load_runs(tmp_path).iloc[0]["status"] == "diverged"


@pytest.mark.parametrize("override, message", [
    ("model_name=convnett", "unknown model 'convnett'"),
    ("dataset_name=cifar100", "unknown dataset 'cifar100'"),
    ("loss=fwdbwd_lib.losses.crossentropy", "has no attribute 'crossentropy'"),
    ("epochs=-2", "epochs must be >= 0"),
])
def test_cli_bad_input_exits_with_message(tmp_path, data_root, override, message):
    result = run_cli("fwdbwd_lib.train", "--config_path", shipped_config(), *SMALL, override,
                     f"runs_dir={tmp_path}", env_data_root=data_root)
    assert result.returncode == 2
    assert message in result.stderr
    assert not any(tmp_path.iterdir())


def test_cli_missing_data_names_setting(tmp_path):
    result = run_cli("fwdbwd_lib.train", "--config_path", shipped_config(), *SMALL,
                     f"runs_dir={tmp_path / 'runs'}", env_data_root=tmp_path / "nowhere")
    assert result.returncode == 2
    assert "FWDBWD_DATA" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_missing_config_file(tmp_path):
    result = run_cli("fwdbwd_lib.train", "--config_path", tmp_path / "nope.yaml")
    assert result.returncode == 2
    assert "nope.yaml not found" in result.stderr


def test_cli_sweep_checks_every_combination_first(tmp_path, data_root):
    result = run_cli("fwdbwd_lib.train", "--config_path", shipped_config(), *SMALL,
                     "method=forward_gradient", "num_tangents=1,0", f"runs_dir={tmp_path}",
                     env_data_root=data_root)
    assert result.returncode == 2
    assert "num_tangents must be >= 1, got 0" in result.stderr
    assert not any(tmp_path.iterdir())


def test_cli_invalid_optimizer_value_exits_2(tmp_path, data_root):
    result = run_cli("fwdbwd_lib.train", "--config_path", shipped_config(), *SMALL,
                     "optimizer.lr=abc", f"runs_dir={tmp_path}", env_data_root=data_root)
    assert result.returncode == 2
    assert "fix the optimizer.* values" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_book_finds_jupyter_book():
    from fwdbwd_lib.run_book import jupyter_book_executable

    assert jupyter_book_executable().is_file()
