"""Step-local peak memory and step timing, shared by the training loop and the cost benchmark."""

from __future__ import annotations

import os
import time
import warnings
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

MIB = 2**20

PEAK_MEMORY_DEFINITION = (
    "peak_memory_mib: the maximum number of bytes held by PyTorch's allocator during the measured "
    "call minus the bytes held when it began, in MiB; memory that exists before the call "
    "(parameters, optimizer state, data) is excluded. CUDA: torch.cuda.max_memory_allocated "
    "after torch.cuda.reset_peak_memory_stats. CPU: the allocation events that torch.profiler "
    "records with profile_memory=True."
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_memory(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """Run ``fn()`` and return its result and its step-local peak memory in MiB.

    See ``PEAK_MEMORY_DEFINITION``. On CPU the profiler slows the call, so time it separately.
    """
    if device.type == "cuda":
        synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        synchronize(device)
        return result, (torch.cuda.max_memory_allocated(device) - start) / MIB
    return _measure_cpu_peak_memory(fn)


def _measure_cpu_peak_memory(fn: Callable[[], T]) -> tuple[T, float]:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    # A CUDA build of torch on a machine without a GPU makes the profiler's Kineto backend log
    # "gpuGetDeviceCount failed"; level 5 keeps Kineto quiet. It is read when Kineto starts.
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Warning: Profiler clears events")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
            result = fn()
    events = []
    pending = list(profiler.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        if node.tag == _EventType.Allocation:
            events.append(node)
        pending.extend(node.children)
    if not events:
        return result, 0.0
    events.sort(key=lambda node: node.start_time_ns)
    # total_allocated counts from the profiler's start; the first event's size is removed to get
    # the level just before the call's first allocation.
    first = events[0].extra_fields
    baseline = first.total_allocated - first.alloc_size
    peak = max(node.extra_fields.total_allocated for node in events)
    return result, max(peak - baseline, 0) / MIB


class StepTimer:
    """Wall-clock time of a block in milliseconds, synchronising CUDA before and after."""

    def __init__(self, device: torch.device):
        self.device = device
        self.elapsed_ms = 0.0

    def __enter__(self) -> "StepTimer":
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.elapsed_ms = (time.perf_counter() - self._start) * 1000.0


def persistent_memory_mib(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> float:
    """Return the MiB held by parameters, buffers and optimizer state (tensors counted once)."""
    seen: set[int] = set()
    total = 0

    def add(tensor: torch.Tensor) -> None:
        nonlocal total
        if isinstance(tensor, torch.Tensor) and id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()

    for tensor in list(model.parameters()) + list(model.buffers()):
        add(tensor)
    if optimizer is not None:
        for state in optimizer.state.values():
            for value in state.values():
                add(value)
    return total / MIB
