"""The cost benchmark: the vmap forward gradient, a smoke run of the command and its record, and
the cost chapter executed with papermill on that record and checked with nbval."""

import json
from pathlib import Path

import pytest
import torch

from chapter_helpers import (
    error_outputs, execute_chapter, parameters_source, plotly_outputs, run_nbval,
)
from fwdbwd_lib import bench
from fwdbwd_lib.gradients import ForwardGradient
from fwdbwd_lib.losses import cross_entropy

REPOSITORY = Path(__file__).resolve().parents[1]
CHAPTER = REPOSITORY / "book" / "cost.ipynb"
MEASUREMENT_FIELDS = (
    "model", "family", "variant", "axes", "size", "batch_size", "num_tangents", "num_parameters",
    "status", "median_ms", "q25_ms", "q75_ms", "min_ms", "max_ms", "timed_steps",
    "peak_memory_mib", "time_ratio_to_forward", "time_ratio_to_backprop",
    "memory_ratio_to_forward",
)


def small_convnet(batch_norm: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    return bench.models.get("convnet")(width=3, hidden_size=8, batch_norm=batch_norm)


def gradients_of(method, model, inputs, targets) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    method(model, cross_entropy, inputs, targets, step=5)
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("num_tangents", [1, 3])
def test_vmap_estimate_equals_sequential(num_tangents):
    model = small_convnet().double()
    inputs = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    targets = torch.tensor([0, 3, 9, 1])

    sequential = gradients_of(ForwardGradient(num_tangents, seed=7), model, inputs, targets)
    batched = gradients_of(bench.VmapForwardGradient(num_tangents, seed=7), model, inputs, targets)

    assert sequential.keys() == batched.keys()
    for name in sequential:
        torch.testing.assert_close(batched[name], sequential[name], rtol=1e-9, atol=1e-12)


def test_vmap_estimate_adds_to_existing_grad():
    model = small_convnet().double()
    inputs = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    targets = torch.tensor([1, 2])
    once = gradients_of(bench.VmapForwardGradient(2), model, inputs, targets)

    bench.VmapForwardGradient(2)(model, cross_entropy, inputs, targets, step=5)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, 2 * once[name])


def test_vmap_on_batchnorm_recorded_unsupported():
    plan = bench.ModelPlan("convnet", "vision", {"width": 3, "hidden_size": 8, "batch_norm": True},
                           "width", {3: {}}, 3, (2,), 2)
    setting = bench.SETTINGS["smoke"]
    subject = bench.ModelUnderTest(plan, 3, 2, torch.device("cpu"))

    vmap_result = bench.measure_variant(subject, "fg_vmap", 2, torch.device("cpu"), setting)
    sequential_result = bench.measure_variant(subject, "fg_sequential", 2, torch.device("cpu"),
                                              setting)

    assert vmap_result["status"] == "unsupported"
    assert "RuntimeError" in vmap_result["reason"] or "NotImplementedError" in vmap_result["reason"]
    assert sequential_result["status"] == "ok"


@pytest.fixture(scope="module")
def smoke_record(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cost")
    assert bench.main(["--setting", "smoke", "--out", str(out)]) == 0
    return out


def test_smoke_record_is_complete(smoke_record):
    record = json.loads((smoke_record / "cost_smoke_cpu.json").read_text())
    measurements = record["measurements"]

    assert record["complete"] is True
    assert record["setting"] == "smoke"
    for key in ("torch_version", "git_commit", "hardware", "peak_memory_definition", "inputs",
                "timing", "command", "steps", "plans"):
        assert record.get(key) is not None, key
    assert {m["model"] for m in measurements} == {"mlp", "speech_cnn"}
    assert set(bench.VARIANTS) <= {m["variant"] for m in measurements}
    for measurement in measurements:
        assert measurement["status"] == "ok", measurement.get("reason")
        for field in MEASUREMENT_FIELDS:
            assert field in measurement, field
        assert measurement["timed_steps"] >= 2
        assert measurement["median_ms"] > 0
    forwards = [m for m in measurements if m["variant"] == "forward"]
    assert all(m["time_ratio_to_forward"] == pytest.approx(1.0) for m in forwards)
    assert {m["num_tangents"] for m in measurements if m["variant"] == "fg_vmap"} == {1, 2}


def test_smoke_record_has_loop_overhead(smoke_record):
    record = json.loads((smoke_record / "cost_smoke_cpu.json").read_text())
    overhead = record["loop_overhead"]

    assert len(overhead) == 1
    assert overhead[0]["model"] == "mlp"
    assert overhead[0]["library_iterations"] >= 1
    assert overhead[0]["hand_written_median_ms"] > 0
    expected = 100 * (overhead[0]["library_median_ms"] / overhead[0]["hand_written_median_ms"] - 1)
    assert overhead[0]["overhead_percent"] == pytest.approx(expected)


def test_bench_rejects_unknown_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--setting", "smoke", "--models", "alexnet", "--out", str(tmp_path)])

    assert exit_info.value.code == 2
    assert "alexnet" in capsys.readouterr().err


@pytest.fixture(scope="module")
def executed_chapter(smoke_record):
    return execute_chapter(CHAPTER, smoke_record / "cost.ipynb",
                           {"setting": "smoke", "runs_dir": str(smoke_record)})


def test_chapter_runs_on_smoke_record(executed_chapter):
    assert not error_outputs(executed_chapter)
    assert len(plotly_outputs(executed_chapter)) == 7


def test_chapter_passes_nbval(executed_chapter):
    result = run_nbval(executed_chapter, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]


def test_committed_chapter_reads_stored_record():
    parameters = parameters_source(CHAPTER)

    assert "rerun = False" in parameters
    assert 'setting = "quick"' in parameters
