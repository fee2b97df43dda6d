"""Cost benchmark: time and peak memory of inference, backprop steps and forward-gradient steps.

    python -m fwdbwd_lib.bench                              # quick CPU setting, into book/runs/cost
    python -m fwdbwd_lib.bench --setting full --device cuda:0
    python -m fwdbwd_lib.bench --models convnet mlp --out /tmp/cost

For every model the setting lists, the benchmark measures at a base point and along one axis at a
time from it (batch size, model size, number of tangents K):

- ``forward``: an inference forward pass (eval mode, ``torch.no_grad``);
- ``backprop``: a training step, ``loss.backward()`` then ``optimizer.step()``;
- ``fg_sequential``: a training step with the library's ``ForwardGradient``, K passes in a row;
- ``fg_vmap``: the same estimate from one ``torch.func.vmap`` over ``torch.func.jvp``, which runs
  the primal once and carries the K tangents as a batch dimension;
- ``tangent_draw``: drawing the K tangents alone, as ``ForwardGradient`` draws them.

Each measurement is the median of timed steps after warm-up steps, on CUDA with CUDA events and a
synchronisation after every step. Peak memory is step-local, with the definition the training
records use (``fwdbwd_lib.measure.PEAK_MEMORY_DEFINITION``), measured in one extra step, and
another step counts the FLOPs of matrix products and convolutions (``count_flops``). Every
step uses SGD with momentum 0.9 and learning rate 0, so all timed steps see the same parameter
values. Inputs are synthetic tensors of each family's shape, because cost does not depend on
their values. A last part compares ``fwdbwd_lib.training.train`` with a hand-written loop on the
same model and data. The results go to ``<out>/cost_<setting>_<device type>.json``, rewritten
atomically after every model.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp, vmap
from torch.utils.data import DataLoader, TensorDataset

import fwdbwd_lib.models  # noqa: F401  (registers the models)
from fwdbwd_lib.data import DataSplits
from fwdbwd_lib.gradients import (
    Backprop, ForwardGradient, GradientMethod, StepOutput, forward_ad_compatible_kernels,
    model_outputs,
)
from fwdbwd_lib.losses import cross_entropy
from fwdbwd_lib.measure import PEAK_MEMORY_DEFINITION, measure_peak_memory, synchronize
from fwdbwd_lib.records import atomic_write_json
from fwdbwd_lib.registry import models

logger = logging.getLogger(__name__)

VARIANTS = ("forward", "backprop", "fg_sequential", "fg_vmap", "tangent_draw")
SPEECH_FEATURES = 40      # log-mel bands per frame, as the speech loaders produce by default
TEXT_VOCABULARY = 8000    # the text models' default vocabulary size
NUM_CLASSES = {"vision": 10, "speech": 10, "text": 2}


# ---------------------------------------------------------------------------------------------
# Forward gradient with K tangents in one batched jvp
# ---------------------------------------------------------------------------------------------

class VmapForwardGradient(GradientMethod):
    """Forward gradient whose K jvps run as one ``torch.func.vmap`` over ``torch.func.jvp``.

    The tangents are the ones ``ForwardGradient(num_tangents, tangent, seed)`` draws for the same
    step, so both methods return the same estimate up to floating-point rounding. Under vmap the
    primal computation runs once, and only the tangent computation carries the K dimension.
    Dropout uses ``randomness="same"``, so every tangent uses the same mask, as in the
    sequential method.

    Models that update buffers inside the forward pass (BatchNorm in train mode increments
    ``num_batches_tracked``) and operators without a batching rule or forward-mode AD formula
    raise ``RuntimeError`` or ``NotImplementedError`` here.
    """

    name = "forward_gradient_vmap"

    def __init__(self, num_tangents: int = 1, tangent: str = "gaussian", seed: int = 0):
        self.sequential = ForwardGradient(num_tangents, tangent, seed)
        self.num_tangents = num_tangents
        self.calls = 0

    def __call__(self, model, loss_fn, inputs, targets, step=None):
        if step is None:
            step = self.calls
        self.calls += 1
        parameters = {n: p for n, p in model.named_parameters() if p.requires_grad}
        primals = {n: p.detach() for n, p in parameters.items()}
        drawn = [self.sequential.tangents(parameters, step, k) for k in range(self.num_tangents)]
        stacked = {n: torch.stack([t[n] for t in drawn]) for n in parameters}  # (K, *shape)
        args, kwargs = ((), dict(inputs)) if isinstance(inputs, dict) else ((inputs,), {})

        def loss_and_outputs(values):
            output = functional_call(model, values, args, kwargs, strict=False)
            output = getattr(output, "logits", output)
            return loss_fn(output, targets), output.detach()

        def jvp_along(tangent):
            loss, derivative, outputs = jvp(loss_and_outputs, (primals,), (tangent,), has_aux=True)
            return loss, derivative, outputs

        with forward_ad_compatible_kernels():
            losses, derivatives, outputs = vmap(jvp_along, randomness="same")(stacked)

        for name, parameter in parameters.items():
            tangents = stacked[name]
            weights = derivatives.to(tangents.dtype) / self.num_tangents  # (K,)
            estimate = torch.tensordot(weights, tangents, dims=1)  # (*shape)
            if parameter.grad is None:
                parameter.grad = estimate
            else:
                parameter.grad.add_(estimate)
        return StepOutput(losses[0].detach(), outputs[0])


# ---------------------------------------------------------------------------------------------
# Settings: which models, at which points, with how many steps
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelPlan:
    """One model's base point and the axes varied from it, one at a time.

    ``sizes`` maps the size-axis value (channels, hidden units or layers, named by ``size_name``)
    to builder keyword arguments that override ``base``. One of its keys is ``base_size``.
    """

    model: str
    family: str
    base: dict[str, Any]
    size_name: str
    sizes: dict[int, dict[str, Any]]
    base_size: int
    batch_sizes: tuple[int, ...]
    base_batch: int
    num_tangents: tuple[int, ...] = (1, 4, 16)
    sequence_length: int = 0  # frames (speech) or tokens (text)
    timed_steps: int | None = None  # None: the setting's timed_steps
    note: str = ""


@dataclass(frozen=True)
class Setting:
    """Step counts, time limits and model plans of one benchmark setting."""

    name: str
    description: str
    warmup_steps: int
    timed_steps: int
    slow_step_s: float  # a step at least this long gets fewer timed steps and one warm-up step
    slow_measurement_s: float  # the timed steps of a slow step fit in about this time
    min_timed_steps: int  # the fewest timed steps of a slow step
    plans: tuple[ModelPlan, ...]
    loop_overhead: tuple[tuple[str, int], ...] = ()  # (vision model, batch size)
    loop_steps: int = 20
    measure_memory: bool = True
    count_flops: bool = True


def _resnet_sizes() -> dict[int, dict[str, Any]]:
    # Depth axis: BasicBlocks per stage of ResNet-10, -18 and -34, each with resnet18's stem.
    return {10: {"blocks": (1, 1, 1, 1)}, 18: {}, 34: {"blocks": (3, 4, 6, 3)}}


QUICK_PLANS = (
    ModelPlan("mlp", "vision", {"hidden_sizes": (512, 512)}, "hidden units per layer",
              {128: {"hidden_sizes": (128, 128)}, 512: {}, 2048: {"hidden_sizes": (2048, 2048)}},
              512, (32, 128, 512), 128),
    ModelPlan("convnet", "vision", {"width": 32}, "channels of the first convolution",
              {8: {"width": 8}, 16: {"width": 16}, 32: {}}, 32, (32, 128, 512), 128),
    ModelPlan("resnet18", "vision", {}, "layers (ResNet depth)", _resnet_sizes(), 18,
              (2, 4, 8), 4, timed_steps=10,
              note="batches of 2 to 8 and 10 timed steps: a backprop step of ResNet-18 at batch "
                   "128 takes about 12 s on 2 CPU cores"),
    ModelPlan("speech_cnn", "speech", {"channels": 64, "num_layers": 3}, "channels",
              {32: {"channels": 32}, 64: {}, 128: {"channels": 128}}, 64, (32, 64, 128), 64,
              sequence_length=50),
    ModelPlan("speech_rnn", "speech", {"hidden_size": 64, "num_layers": 1}, "hidden units",
              {32: {"hidden_size": 32}, 64: {}, 128: {"hidden_size": 128}}, 64, (16, 32, 64), 32,
              sequence_length=50),
    ModelPlan("speech_transformer", "speech",
              {"d_model": 64, "num_heads": 4, "num_layers": 2, "ffn_size": 128}, "d_model",
              {32: {"d_model": 32, "ffn_size": 64}, 64: {},
               128: {"d_model": 128, "ffn_size": 256}}, 64, (16, 32, 64), 32,
              sequence_length=50),
    ModelPlan("roberta", "text", {"size": "tiny", "max_length": 64}, "hidden size",
              {64: {}, 128: {"size": "small"}, 256: {"size": "medium"}}, 64, (8, 16, 32), 16,
              sequence_length=64),
    ModelPlan("text_cnn", "text", {"embedding_dim": 64}, "embedding size",
              {32: {"embedding_dim": 32}, 64: {}, 128: {"embedding_dim": 128}}, 64, (32, 64, 128),
              64, sequence_length=64),
)

FULL_PLANS = (
    ModelPlan("mlp", "vision", {"hidden_sizes": (1024, 1024)}, "hidden units per layer",
              {256: {"hidden_sizes": (256, 256)}, 1024: {}, 4096: {"hidden_sizes": (4096, 4096)},
               8192: {"hidden_sizes": (8192, 8192)}}, 1024, (128, 512, 2048, 8192), 512),
    ModelPlan("convnet", "vision", {"width": 32}, "channels of the first convolution",
              {16: {"width": 16}, 32: {}, 64: {"width": 64}, 128: {"width": 128}}, 32,
              (128, 512, 2048, 8192), 512),
    ModelPlan("resnet18", "vision", {}, "layers (ResNet depth)", _resnet_sizes(), 18,
              (32, 128, 512), 128),
    ModelPlan("speech_cnn", "speech", {"channels": 64, "num_layers": 3}, "channels",
              {32: {"channels": 32}, 64: {}, 128: {"channels": 128}, 256: {"channels": 256}}, 64,
              (32, 128, 512), 128, sequence_length=100),
    ModelPlan("speech_rnn", "speech", {"hidden_size": 64, "num_layers": 1}, "hidden units",
              {32: {"hidden_size": 32}, 64: {}, 128: {"hidden_size": 128},
               256: {"hidden_size": 256}}, 64, (32, 128, 512), 128, sequence_length=100),
    ModelPlan("speech_transformer", "speech",
              {"d_model": 64, "num_heads": 4, "num_layers": 2, "ffn_size": 128}, "d_model",
              {32: {"d_model": 32, "ffn_size": 64}, 64: {},
               128: {"d_model": 128, "ffn_size": 256}, 256: {"d_model": 256, "ffn_size": 512}},
              64, (32, 128, 512), 128, sequence_length=100),
    ModelPlan("roberta", "text", {"size": "small", "max_length": 256}, "hidden size",
              {64: {"size": "tiny"}, 128: {}, 256: {"size": "medium"}, 768: {"size": "base"}},
              128, (16, 64, 256), 64, sequence_length=256),
    ModelPlan("text_cnn", "text", {"embedding_dim": 64}, "embedding size",
              {32: {"embedding_dim": 32}, 64: {}, 128: {"embedding_dim": 128},
               256: {"embedding_dim": 256}}, 64, (64, 256, 1024), 256, sequence_length=256),
)

SMOKE_PLANS = (
    ModelPlan("mlp", "vision", {"hidden_sizes": (16,)}, "hidden units per layer",
              {8: {"hidden_sizes": (8,)}, 16: {}}, 16, (4, 8), 8, num_tangents=(1, 2)),
    ModelPlan("speech_cnn", "speech", {"channels": 8, "num_layers": 1}, "channels",
              {8: {}}, 8, (4,), 4, num_tangents=(1, 2), sequence_length=12),
)

SETTINGS = {
    "quick": Setting(
        "quick", "CPU setting sized for 2 cores: small models, short sequences, batches up to "
                 "512 (ResNets up to 8)",
        warmup_steps=2, timed_steps=20, slow_step_s=1.0, slow_measurement_s=5.0,
        min_timed_steps=3, plans=QUICK_PLANS, loop_overhead=(("convnet", 128),), loop_steps=20,
    ),
    "full": Setting(
        "full", "GPU setting: larger models and batches, 50 timed steps",
        warmup_steps=5, timed_steps=50, slow_step_s=2.0, slow_measurement_s=60.0,
        min_timed_steps=20, plans=FULL_PLANS, loop_overhead=(("convnet", 512), ("resnet18", 128)),
        loop_steps=50,
    ),
    "smoke": Setting(
        "smoke", "seconds-long check of the benchmark itself; its numbers mean nothing",
        warmup_steps=1, timed_steps=2, slow_step_s=5.0, slow_measurement_s=5.0,
        min_timed_steps=2, plans=SMOKE_PLANS, loop_overhead=(("mlp", 8),), loop_steps=4,
    ),
}


# ---------------------------------------------------------------------------------------------
# Models and synthetic batches
# ---------------------------------------------------------------------------------------------

def build_benchmark_model(plan: ModelPlan, size: int) -> torch.nn.Module:
    """Build ``plan.model`` at size-axis value ``size`` with the family's input shape."""
    kwargs = {**plan.base, **plan.sizes[size], "num_classes": NUM_CLASSES[plan.family]}
    if plan.family == "speech":
        kwargs["num_features"] = SPEECH_FEATURES
    if plan.family == "text":
        kwargs["vocab_size"] = TEXT_VOCABULARY
    blocks = kwargs.pop("blocks", None)
    if blocks is not None:
        return _adapted_resnet(blocks, kwargs["num_classes"])
    return models.get(plan.model)(**kwargs)


def _adapted_resnet(blocks: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """Build a torchvision ResNet of BasicBlocks with the small-image stem of resnet18 here."""
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, list(blocks), num_classes=num_classes)
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    return model


def synthetic_batch(plan: ModelPlan, batch_size: int, device: torch.device,
                    seed: int = 0) -> tuple[Any, torch.Tensor]:
    """Return random ``(inputs, targets)`` in the family's layout.

    - vision: images ``(batch, 3, 32, 32)``;
    - speech: ``{"features": (batch, frames, 40), "mask": (batch, frames)}``, every frame valid;
    - text: ``{"input_ids": (batch, tokens), "attention_mask": (batch, tokens)}``, no padding.

    Targets are class indices ``(batch,)``.
    """
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, NUM_CLASSES[plan.family], (batch_size,), generator=generator)
    length = plan.sequence_length
    if plan.family == "vision":
        inputs = torch.randn(batch_size, 3, 32, 32, generator=generator)
    elif plan.family == "speech":
        inputs = {"features": torch.randn(batch_size, length, SPEECH_FEATURES, generator=generator),
                  "mask": torch.ones(batch_size, length, dtype=torch.bool)}
    elif plan.family == "text":
        # Token ids from 3 up, clear of RoBERTa's <s>, <pad> and </s> (0, 1, 2).
        inputs = {"input_ids": torch.randint(3, TEXT_VOCABULARY, (batch_size, length),
                                             generator=generator),
                  "attention_mask": torch.ones(batch_size, length, dtype=torch.long)}
    else:
        raise ValueError(f"unknown model family {plan.family!r}: expected vision, speech or text")
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}, targets.to(device)
    return inputs.to(device), targets.to(device)


# ---------------------------------------------------------------------------------------------
# Timing and memory of one variant
# ---------------------------------------------------------------------------------------------

def time_once_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Time one call of ``fn`` in milliseconds: CUDA events on a GPU, ``perf_counter`` on CPU."""
    if device.type == "cuda":
        synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    fn()
    return (time.perf_counter() - start_s) * 1000.0


def measure(fn: Callable[[], Any], prepare: Callable[[], None], device: torch.device,
            setting: Setting, timed_steps: int | None = None) -> dict[str, Any]:
    """Warm up, time steps and measure one step's peak memory, running ``prepare`` untimed first.

    A step that takes at least ``setting.slow_step_s`` in its first warm-up gets no second
    warm-up step, and fewer timed steps: as many as fit in ``setting.slow_measurement_s``, but at
    least ``setting.min_timed_steps``. Other steps get ``timed_steps`` (default: the setting's).
    """
    timed_steps = timed_steps or setting.timed_steps
    slow_step_ms = setting.slow_step_s * 1000.0
    warmup_ms = []
    for _ in range(setting.warmup_steps):
        prepare()
        warmup_ms.append(time_once_ms(fn, device))
        if warmup_ms[-1] >= slow_step_ms:
            break
    steps = timed_steps
    if warmup_ms[-1] >= slow_step_ms:
        affordable = int(setting.slow_measurement_s * 1000.0 / warmup_ms[-1])
        steps = min(timed_steps, max(setting.min_timed_steps, affordable))

    times_ms = []
    for _ in range(steps):
        prepare()
        times_ms.append(time_once_ms(fn, device))
    peak_memory_mib = None
    if setting.measure_memory:
        prepare()
        _, peak_memory_mib = measure_peak_memory(fn, device)
    flops = None
    if setting.count_flops:
        prepare()
        flops = count_flops(fn)

    q25, median, q75 = np.percentile(times_ms, [25, 50, 75])
    return {
        "median_ms": float(median), "q25_ms": float(q25), "q75_ms": float(q75),
        "min_ms": float(min(times_ms)), "max_ms": float(max(times_ms)),
        "timed_steps": steps, "warmup_steps": len(warmup_ms),
        "steps_reduced": steps < setting.timed_steps,
        "peak_memory_mib": peak_memory_mib,
        "flops": flops,
    }


def count_flops(fn: Callable[[], Any]) -> int:
    """Count the FLOPs of the matrix products, convolutions and attention ops ``fn`` dispatches.

    ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-add of the ops it has
    formulas for, and nothing for elementwise ops, reductions or ops without a formula (the
    recurrent kernels of ``nn.GRU``). Under forward-mode AD it also counts the product of a
    weight with the zero tangent of an input that carries none.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class ModelUnderTest:
    """A model, its batch and an SGD optimizer with learning rate 0, and one step per variant."""

    def __init__(self, plan: ModelPlan, size: int, batch_size: int, device: torch.device):
        torch.manual_seed(0)
        self.model = build_benchmark_model(plan, size).to(device).train()
        self.inputs, self.targets = synthetic_batch(plan, batch_size, device)
        self.parameters = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.num_parameters = sum(p.numel() for p in self.parameters.values())
        # Learning rate 0: the update runs in full but the parameters keep their values.
        self.optimizer = torch.optim.SGD(self.parameters.values(), lr=0.0, momentum=0.9)

    def clear_gradients(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def forward(self) -> None:
        self.model.eval()
        with torch.no_grad():
            model_outputs(self.model, self.inputs)
        self.model.train()

    def training_step(self, method: GradientMethod) -> Callable[[], None]:
        def step() -> None:
            method(self.model, cross_entropy, self.inputs, self.targets)
            self.optimizer.step()
        return step

    def tangent_draw(self, num_tangents: int) -> Callable[[], None]:
        method = ForwardGradient(num_tangents=num_tangents)

        def draw() -> None:
            for index in range(num_tangents):
                method.tangents(self.parameters, 0, index)
        return draw


def measure_variant(subject: ModelUnderTest, variant: str, num_tangents: int,
                    device: torch.device, setting: Setting,
                    timed_steps: int | None = None) -> dict[str, Any]:
    """Measure one variant, or return status "unsupported" with the error the model raised."""
    if variant == "forward":
        fn, prepare = subject.forward, lambda: None
    elif variant == "backprop":
        fn, prepare = subject.training_step(Backprop()), subject.clear_gradients
    elif variant == "fg_sequential":
        fn = subject.training_step(ForwardGradient(num_tangents=num_tangents))
        prepare = subject.clear_gradients
    elif variant == "fg_vmap":
        fn = subject.training_step(VmapForwardGradient(num_tangents=num_tangents))
        prepare = subject.clear_gradients
    elif variant == "tangent_draw":
        fn, prepare = subject.tangent_draw(num_tangents), lambda: None
    else:
        raise ValueError(f"unknown variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    try:
        return {"status": "ok", **measure(fn, prepare, device, setting, timed_steps)}
    except torch.OutOfMemoryError as error:
        reason = str(error).splitlines()[0]
        status = "out_of_memory"
    except (NotImplementedError, RuntimeError) as error:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:400]}"
        status = "unsupported"
    finally:
        subject.clear_gradients()
        subject.model.train()
    logger.warning("%s %s (K=%d) %s: %s", subject.model.__class__.__name__, variant,
                   num_tangents, status, reason)
    return {"status": status, "reason": reason}


# ---------------------------------------------------------------------------------------------
# One model: the base point and the three axes
# ---------------------------------------------------------------------------------------------

def benchmark_model(plan: ModelPlan, setting: Setting, device: torch.device) -> list[dict]:
    """Measure every variant at every point of ``plan`` and return one row per measurement."""
    points: dict[tuple[int, int], set[str]] = {}
    for batch_size in plan.batch_sizes:
        points.setdefault((plan.base_size, batch_size), set()).add("batch_size")
    for size in plan.sizes:
        points.setdefault((size, plan.base_batch), set()).add("size")
    points.setdefault((plan.base_size, plan.base_batch), set()).add("num_tangents")

    rows = []
    for (size, batch_size), axes in points.items():
        subject = ModelUnderTest(plan, size, batch_size, device)
        work = [("forward", 1), ("backprop", 1), ("fg_sequential", 1), ("fg_vmap", 1)]
        if axes & {"size", "num_tangents"}:
            # The draw depends on the parameters, not on the batch.
            work.append(("tangent_draw", 1))
        if "num_tangents" in axes:
            work += [(variant, k) for k in plan.num_tangents if k > 1
                     for variant in ("fg_sequential", "fg_vmap", "tangent_draw")]
        for variant, num_tangents in work:
            result = measure_variant(subject, variant, num_tangents, device, setting,
                                     plan.timed_steps)
            rows.append({
                "model": plan.model, "family": plan.family, "variant": variant,
                "axes": sorted(axes), "size_name": plan.size_name, "size": size,
                "is_base_size": size == plan.base_size, "batch_size": batch_size,
                "is_base_batch": batch_size == plan.base_batch, "num_tangents": num_tangents,
                "num_parameters": subject.num_parameters,
                "model_kwargs": {**plan.base, **plan.sizes[size]},
                "sequence_length": plan.sequence_length or None, **result,
            })
            logger.info("%s size %s batch %d %s K=%d: %s", plan.model, size, batch_size, variant,
                        num_tangents, f"{result['median_ms']:.2f} ms" if result["status"] == "ok"
                        else result["status"])
        del subject
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Add time and memory ratios to the forward pass and backprop step of the same point."""
    reference: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        if row["variant"] in ("forward", "backprop") and row["status"] == "ok":
            key = (row["model"], row["size"], row["batch_size"])
            reference.setdefault(key, {})[row["variant"]] = row
    for row in rows:
        point = reference.get((row["model"], row["size"], row["batch_size"]), {})
        for name in ("forward", "backprop"):
            other = point.get(name)
            ok = row["status"] == "ok" and other is not None
            row[f"time_ratio_to_{name}"] = row["median_ms"] / other["median_ms"] if ok else None
            memory_ok = ok and row["peak_memory_mib"] is not None and other["peak_memory_mib"]
            row[f"memory_ratio_to_{name}"] = (row["peak_memory_mib"] / other["peak_memory_mib"]
                                             if memory_ok else None)
            flops_ok = ok and row.get("flops") is not None and other.get("flops")
            row[f"flop_ratio_to_{name}"] = row["flops"] / other["flops"] if flops_ok else None


# ---------------------------------------------------------------------------------------------
# Training-loop overhead: fwdbwd_lib.training.train against a hand-written loop
# ---------------------------------------------------------------------------------------------

def synthetic_image_data(root, num_train: int = 256, num_eval: int = 64, seed: int = 0,
                         **unused: Any) -> DataSplits:
    """Return random 3×32×32 images with 10 classes as a dataset loader (``dataset_name``).

    ``root`` is ignored. The training loop of the overhead measurement reads it through the
    dotted path ``fwdbwd_lib.bench.synthetic_image_data``.
    """
    generator = torch.Generator().manual_seed(seed)

    def split(size: int) -> TensorDataset:
        images = torch.randn(size, 3, 32, 32, generator=generator)
        return TensorDataset(images, torch.randint(0, 10, (size,), generator=generator))

    return DataSplits(split(num_train), split(num_eval), split(num_eval), num_classes=10,
                      model_kwargs={"in_channels": 3, "image_size": 32},
                      variant="synthetic Gaussian images, 3x32x32, 10 classes")


def _hand_written_loop_ms(model_name: str, model_kwargs: dict, dataset: TensorDataset,
                          batch_size: int, device: torch.device, skip: int) -> list[float]:
    """Per-iteration times of a plain loop: load, forward, loss, backward, optimizer step."""
    torch.manual_seed(0)
    model = models.get(model_name)(**model_kwargs).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=generator)
    times_ms = []
    previous = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        loss.item()  # synchronises, as the library's loop does when it logs the loss
        now = time.perf_counter()
        times_ms.append((now - previous) * 1000.0)
        previous = now
    return times_ms[skip:]


def _library_loop_ms(model_name: str, batch_size: int, num_train: int, device: torch.device,
                     runs_dir: Path) -> tuple[list[float], list[float]]:
    """Per-iteration times of ``train()`` from its records, and its own per-step times.

    An iteration's time is the difference between consecutive step rows' ``wall_time_s``, so it
    covers data loading, the step and the loop's bookkeeping, but not evaluation (which runs at
    the epoch's start and end only). The first three steps are left out: the first two warm up
    and the second is profiled for peak memory.
    """
    from fwdbwd_lib.config import compose_config, shipped_config, to_container
    from fwdbwd_lib.records import load_runs
    from fwdbwd_lib.training import train

    config = to_container(compose_config(shipped_config("cifar10_convnet"), [
        f"model_name={model_name}", "method=backprop", "epochs=1", f"batch_size={batch_size}",
        "eval_batch_size=64", "optimizer.lr=0.01",
        f"device_id={-1 if device.type == 'cpu' else device.index or 0}",
        f"runs_dir={runs_dir}",
    ]))
    config["dataset_name"] = "fwdbwd_lib.bench.synthetic_image_data"
    config["dataset"] = {"num_train": num_train, "num_eval": 64}
    config["model"] = {}
    result = train(config, progress=False)
    steps = load_runs(result.run_dir, metrics="step").sort_values("step")
    iteration_ms = (steps["wall_time_s"].diff() * 1000.0).iloc[3:]
    step_ms = steps.loc[~steps["profiled"].fillna(False).astype(bool), "step_time_ms"].iloc[2:]
    return iteration_ms.tolist(), step_ms.tolist()


def measure_loop_overhead(model_name: str, batch_size: int, steps: int,
                          device: torch.device) -> dict[str, Any]:
    """Compare the median iteration of ``train()`` with a hand-written loop, in percent.

    The hand-written loop runs before and after the library's, and its two runs are pooled, so
    a slow drift of the machine's speed affects both sides alike.
    """
    skip = 3
    num_train = batch_size * (steps + skip)
    data = synthetic_image_data(None, num_train=num_train)
    model_kwargs = {"num_classes": 10, "in_channels": 3, "image_size": 32}
    hand_ms = _hand_written_loop_ms(model_name, model_kwargs, data.train, batch_size, device, skip)
    with tempfile.TemporaryDirectory(prefix="fwdbwd-bench-") as runs_dir:
        library_ms, library_step_ms = _library_loop_ms(model_name, batch_size, num_train, device,
                                                       Path(runs_dir))
    hand_ms += _hand_written_loop_ms(model_name, model_kwargs, data.train, batch_size, device, skip)
    hand, library = float(np.median(hand_ms)), float(np.median(library_ms))
    return {
        "model": model_name, "batch_size": batch_size, "method": "backprop",
        "hand_written_median_ms": hand, "library_median_ms": library,
        "library_step_median_ms": float(np.median(library_step_ms)),
        "hand_written_iterations": len(hand_ms), "library_iterations": len(library_ms),
        "overhead_percent": 100.0 * (library - hand) / hand,
        "definition": (
            "median time of one loop iteration (loading the batch, moving it to the device, the "
            "backprop step and the optimizer step, plus the library loop's logging and metrics), "
            "from the start of one iteration to the start of the next; evaluation excluded"
        ),
    }


# ---------------------------------------------------------------------------------------------
# The whole run and its record
# ---------------------------------------------------------------------------------------------

def record_path(out: Path, setting: str, device: torch.device) -> Path:
    return Path(out) / f"cost_{setting}_{device.type}.json"


def run_benchmark(setting_name: str, device: torch.device, out: Path,
                  model_names: list[str] | None = None) -> Path:
    """Run the benchmark and return the path of its record (rewritten after every model)."""
    from fwdbwd_lib.training import git_commit, hardware_description

    setting = SETTINGS[setting_name]
    plans = [plan for plan in setting.plans if model_names is None or plan.model in model_names]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = record_path(out, setting_name, device)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "benchmark": "fwdbwd_lib.bench",
        "setting": setting_name,
        "setting_description": setting.description,
        "command": " ".join(["python -m fwdbwd_lib.bench", f"--setting {setting_name}",
                             f"--device {device}",
                             *([f"--models {' '.join(model_names)}"] if model_names else [])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": False,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        **git_commit(),
        "hardware": hardware_description(device),
        "inputs": ("synthetic: vision 3x32x32 Gaussian images, 10 classes; speech "
                   f"{SPEECH_FEATURES} Gaussian features per frame, every frame valid, 10 classes; "
                   f"text uniform token ids below {TEXT_VOCABULARY}, no padding, 2 classes"),
        "timing": (
            "median over timed steps after warm-up steps; CPU: time.perf_counter around each "
            "step; CUDA: CUDA events around each step, with a synchronisation after it. "
            "Training steps include optimizer.step() (SGD, momentum 0.9, learning rate 0). "
            "forward is an inference pass in eval mode under torch.no_grad()."
        ),
        "peak_memory_definition": PEAK_MEMORY_DEFINITION,
        "flops_definition": (
            "FLOPs of the matrix products, convolutions and attention ops dispatched in one step, "
            "counted by torch.utils.flop_counter.FlopCounterMode (2 per multiply-add); elementwise "
            "ops and ops without a counting formula (nn.GRU's kernels) count nothing"
        ),
        "steps": {key: value for key, value in asdict(setting).items()
                  if key not in ("plans", "loop_overhead", "name", "description")},
        "plans": [_plan_record(plan) for plan in plans],
        "measurements": [],
        "loop_overhead": [],
    }

    for plan in plans:
        logger.info("benchmarking %s", plan.model)
        model_start = time.perf_counter()
        record["measurements"] += benchmark_model(plan, setting, device)
        logger.info("%s took %.0f s", plan.model, time.perf_counter() - model_start)
        record["duration_s"] = time.perf_counter() - started
        atomic_write_json(path, record)

    for model_name, batch_size in setting.loop_overhead:
        if model_names is not None and model_name not in model_names:
            continue
        logger.info("measuring the training loop's overhead on %s", model_name)
        record["loop_overhead"].append(
            measure_loop_overhead(model_name, batch_size, setting.loop_steps, device))

    record["duration_s"] = time.perf_counter() - started
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["complete"] = True
    atomic_write_json(path, record)
    return path


def _plan_record(plan: ModelPlan) -> dict[str, Any]:
    entry = asdict(plan)
    entry["sizes"] = {str(size): kwargs for size, kwargs in plan.sizes.items()}
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fwdbwd_lib.bench",
        description="Measure the time and peak memory of inference, backprop steps and "
                    "forward-gradient steps, and write them as a JSON record.",
    )
    parser.add_argument("--setting", default="quick", choices=list(SETTINGS),
                        help="quick: 2-core CPU, about 12 minutes; full: one GPU; smoke: seconds")
    parser.add_argument("--device", default="cpu",
                        help="'cpu' or 'cuda:N' (default: cpu)")
    parser.add_argument("--out", default=None,
                        help="folder for the record (default: book/runs/cost in the checkout)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="measure only these models of the setting (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    available = [plan.model for plan in SETTINGS[args.setting].plans]
    unknown = sorted(set(args.models or []) - set(available))
    if unknown:
        parser.error(f"models {', '.join(unknown)} are not in setting {args.setting!r}; "
                     f"choose from {', '.join(available)}")
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        parser.error(f"invalid device {args.device!r}: expected 'cpu', or 'cuda:N' on a machine "
                     "with CUDA")
    device = torch.device(args.device)
    if args.out is None:
        from fwdbwd_lib.book import book_dir

        out = book_dir() / "runs" / "cost"
    else:
        out = Path(args.out)
    path = run_benchmark(args.setting, device, out, args.models)
    logger.info("record written: %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
