"""Gradient methods: backpropagation and forward gradients behind one interface.

A gradient method is called with a model, a loss function and a batch. It fills ``param.grad`` of
every trainable parameter (adding to a gradient that is already there, as ``loss.backward()``
does) and returns the loss and the model outputs. Any ``torch.optim`` optimizer, learning-rate
scheduler and gradient clipping then work unchanged.

The forward gradient (Baydin et al. 2022, "Gradients without Backpropagation", arXiv 2202.08587)
runs one forward-mode AD pass per tangent v: the pass returns the loss L and the directional
derivative ∇L·v, and g = (∇L·v) v is an unbiased estimate of ∇L when E[v vᵀ] = I. With K tangents
the estimate is the mean of the K products.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from fwdbwd_lib.registry import gradient_methods, register_gradient_method

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
TANGENT_DISTRIBUTIONS = ("gaussian", "rademacher")


@dataclass
class StepOutput:
    """Result of a gradient method call: the detached scalar loss and model outputs."""

    loss: torch.Tensor
    outputs: torch.Tensor


def model_outputs(model: torch.nn.Module, inputs: Any) -> torch.Tensor:
    """Call ``model`` on a tensor, or on a mapping as keyword arguments, and return its logits."""
    output = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return _logits(output)


def _logits(output: Any) -> torch.Tensor:
    # Hugging Face models return a ModelOutput whose `logits` field contains the scores.
    return getattr(output, "logits", output)


class GradientMethod:
    """Base class: ``method(model, loss_fn, inputs, targets, step)`` fills ``param.grad``."""

    name = ""

    def __call__(
        self, model: torch.nn.Module, loss_fn: LossFn, inputs: Any, targets: Any,
        step: int | None = None,
    ) -> StepOutput:
        raise NotImplementedError


@register_gradient_method("backprop")
class Backprop(GradientMethod):
    """Reverse-mode AD: the ordinary ``loss.backward()``."""

    name = "backprop"

    def __call__(self, model, loss_fn, inputs, targets, step=None):
        outputs = model_outputs(model, inputs)
        loss = loss_fn(outputs, targets)
        loss.backward()
        return StepOutput(loss.detach(), outputs.detach())


# ---------------------------------------------------------------------------------------------
# Forward-mode AD
# ---------------------------------------------------------------------------------------------

class ForwardADUnsupportedError(NotImplementedError):
    """An operator in the model has no forward-mode AD formula in the installed torch."""


# Workarounds for operators known to lack forward-mode AD in torch 2.11.
_FORWARD_AD_WORKAROUNDS = {
    "mkldnn_rnn_layer": (
        "float32 nn.LSTM on CPU runs through oneDNN; wrap the model call in "
        "torch.backends.mkldnn.flags(enabled=False), use float64, or use nn.GRU / nn.LSTMCell"
    ),
    "_scaled_dot_product_flash_attention": (
        "use eager attention (attn_implementation='eager' in transformers) or run "
        "scaled_dot_product_attention under torch.nn.attention.sdpa_kernel(SDPBackend.MATH)"
    ),
    "_scaled_dot_product_efficient_attention": (
        "use eager attention or the math SDPA backend (SDPBackend.MATH)"
    ),
    "_transformer_encoder_layer_fwd": (
        "disable the inference fast path with torch.backends.mha.set_fastpath_enabled(False)"
    ),
    "_native_multi_head_attention": (
        "disable the inference fast path with torch.backends.mha.set_fastpath_enabled(False)"
    ),
    "ctc_loss": "write CTC in log space with plain tensor ops (large finite negatives, not -inf)",
    "_thnn_fused_gru_cell": "use nn.GRU on CPU or an unfused GRU cell written with plain ops",
}

_UNSUPPORTED_OP = re.compile(r"forward AD with (\S+?)(?:\.\w+)? that does not support it")


def _explain_forward_ad_error(error: Exception) -> ForwardADUnsupportedError | None:
    match = _UNSUPPORTED_OP.search(str(error))
    if match is None:
        return None
    op = match.group(1)
    workaround = next(
        (text for key, text in _FORWARD_AD_WORKAROUNDS.items() if op.startswith(key)),
        "compute this part with ops that have forward-mode AD formulas, or use method=backprop",
    )
    return ForwardADUnsupportedError(
        f"operator {op} has no forward-mode AD formula in torch {torch.__version__}, so "
        f"method=forward_gradient cannot run this model as written; workaround: {workaround}"
    )


@contextlib.contextmanager
def forward_ad_compatible_kernels():
    """Route attention to kernels that have forward-mode AD formulas.

    The flash and memory-efficient scaled-dot-product-attention kernels and the multi-head
    attention inference fast path have none in torch 2.11; the math SDPA backend gives the same
    values with ops that do.
    """
    fastpath_was_enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath_was_enabled)


def directional_derivative(
    model: torch.nn.Module,
    loss_fn: LossFn,
    inputs: Any,
    targets: Any,
    tangents: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run one forward-mode AD pass and return ``(loss, ∇L·v, outputs)``, all detached.

    ``tangents`` maps parameter names (as in ``model.named_parameters()``) to tensors of the same
    shape; parameters without a tangent are held constant. No activation tape is kept, because
    the parameters enter as detached dual tensors and nothing requires grad. Buffers (BatchNorm
    running statistics) update in place as in an ordinary forward pass.
    """
    parameters = dict(model.named_parameters())
    try:
        with fwAD.dual_level(), forward_ad_compatible_kernels():
            duals = {
                name: fwAD.make_dual(parameters[name].detach(), tangent)
                for name, tangent in tangents.items()
            }
            if isinstance(inputs, Mapping):
                output = functional_call(model, duals, args=(), kwargs=dict(inputs), strict=False)
            else:
                output = functional_call(model, duals, (inputs,), strict=False)
            output = _logits(output)
            loss = loss_fn(output, targets)
            loss_primal, loss_tangent = fwAD.unpack_dual(loss)
            output_primal = fwAD.unpack_dual(output).primal
    except (NotImplementedError, RuntimeError) as error:
        explained = _explain_forward_ad_error(error)
        if explained is None:
            raise
        raise explained from error

    if loss_tangent is None:
        # The loss does not depend on any parameter that carries a tangent.
        loss_tangent = torch.zeros_like(loss_primal)
    return loss_primal.detach(), loss_tangent.detach(), output_primal.detach()


def compare_with_backprop(
    model: torch.nn.Module,
    loss_fn: LossFn,
    inputs: Any,
    targets: Any,
    tangents: Mapping[str, torch.Tensor],
    rng_seed: int = 0,
) -> dict[str, Any]:
    """Compare the jvp ∇L·v of one forward-mode pass with backprop's gradient dotted with v.

    Both passes start from the global RNG seeded with ``rng_seed``, so dropout draws the same
    masks. Returns ``status`` (``"ok"``, or the message of an operator without forward-mode AD),
    ``jvp``, ``grad_dot_tangent`` and ``relative_error``. Gradients of ``model`` are overwritten.
    """
    row = {"status": "ok", "jvp": float("nan"), "grad_dot_tangent": float("nan"),
           "relative_error": float("nan")}
    torch.manual_seed(rng_seed)
    model.zero_grad(set_to_none=True)
    Backprop()(model, loss_fn, inputs, targets)
    expected = sum(float((p.grad.double() * tangents[n].double()).sum())
                   for n, p in model.named_parameters() if n in tangents and p.grad is not None)
    torch.manual_seed(rng_seed)
    try:
        _, derivative, _ = directional_derivative(model, loss_fn, inputs, targets, tangents)
    except ForwardADUnsupportedError as error:
        row["status"] = str(error)
        return row
    row.update(jvp=float(derivative), grad_dot_tangent=expected,
               relative_error=abs(float(derivative) - expected) / abs(expected))
    return row


def tangent_seed(seed: int, step: int, index: int) -> int:
    """Return the generator seed of tangent ``index`` at training step ``step``.

    Every (seed, step, index) triple maps to its own well-mixed 63-bit seed, so a tangent can be
    regenerated from these three integers instead of being stored.
    """
    state = np.random.SeedSequence([seed, step, index]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def draw_tangents(
    parameters: Mapping[str, torch.Tensor], distribution: str, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Draw one tangent per parameter with E[v vᵀ] = I: standard normal or Rademacher (±1)."""
    tangents = {}
    for name, parameter in parameters.items():
        if distribution == "gaussian":
            tangent = torch.randn(
                parameter.shape, generator=generator, device=generator.device, dtype=parameter.dtype
            )
        elif distribution == "rademacher":
            bits = torch.randint(0, 2, parameter.shape, generator=generator, device=generator.device)
            tangent = (2 * bits - 1).to(parameter.dtype)
        else:
            raise ValueError(
                f"unknown tangent distribution {distribution!r}: expected one of "
                f"{', '.join(TANGENT_DISTRIBUTIONS)}"
            )
        tangents[name] = tangent.to(parameter.device)
    return tangents


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda_state


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@register_gradient_method("forward_gradient")
class ForwardGradient(GradientMethod):
    """Forward gradient: the mean over K tangents v of (∇L·v) v, from forward-mode AD.

    Args:
        num_tangents: K, the number of tangents averaged per step.
        tangent: ``"gaussian"`` (v ~ N(0, I)) or ``"rademacher"`` (entries ±1).
        seed: seed of the tangent stream; tangent k of step s is drawn from a generator seeded
            with ``tangent_seed(seed, s, k)``, independent of the global RNG.

    Within one step every tangent gets the same batch, the same dropout masks (the global RNG
    is rewound before each pass) and the same BatchNorm batch statistics. The running
    statistics are updated once, as in one backprop step, whatever K is. Tied parameters appear
    once in ``named_parameters()`` and get one estimate. Parameters with ``requires_grad=False``
    get no tangent and their ``.grad`` is left alone.
    """

    name = "forward_gradient"

    def __init__(self, num_tangents: int = 1, tangent: str = "gaussian", seed: int = 0):
        if not isinstance(num_tangents, int) or num_tangents < 1:
            raise ValueError(f"num_tangents must be a positive integer, got {num_tangents!r}")
        if tangent not in TANGENT_DISTRIBUTIONS:
            raise ValueError(
                f"unknown tangent distribution {tangent!r}: expected one of "
                f"{', '.join(TANGENT_DISTRIBUTIONS)}"
            )
        self.num_tangents = num_tangents
        self.tangent = tangent
        self.seed = seed
        self.calls = 0  # the step used when a call passes step=None

    def tangents(self, parameters: Mapping[str, torch.Tensor], step: int, index: int):
        """Regenerate tangent ``index`` of step ``step`` for ``parameters``."""
        device = next(iter(parameters.values())).device
        generator = torch.Generator(device=device)
        generator.manual_seed(tangent_seed(self.seed, step, index))
        return draw_tangents(parameters, self.tangent, generator)

    def __call__(self, model, loss_fn, inputs, targets, step=None):
        """Fill ``param.grad`` with the forward gradient of ``loss_fn(model(inputs), targets)``.

        ``step`` selects the tangents (regenerated from ``(seed, step, index)``); with None the
        method counts its own calls, so repeated calls never reuse a direction.
        """
        if step is None:
            step = self.calls
        self.calls += 1
        parameters = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not parameters:
            raise ValueError("the model has no parameters with requires_grad=True to train")
        device = next(iter(parameters.values())).device
        rng_state = _rng_state(device) if self.num_tangents > 1 else None
        buffers_after_first_pass: dict[str, torch.Tensor] = {}
        gradient: dict[str, torch.Tensor] = {}

        for index in range(self.num_tangents):
            if index > 0:
                _set_rng_state(rng_state, device)
            tangents = self.tangents(parameters, step, index)
            loss, derivative, outputs = directional_derivative(
                model, loss_fn, inputs, targets, tangents
            )

            if index == 0:
                first_loss, first_outputs = loss, outputs
                if self.num_tangents > 1:
                    buffers_after_first_pass = {
                        n: b.detach().clone() for n, b in model.named_buffers()
                    }
            else:
                with torch.no_grad():
                    for name, buffer in model.named_buffers():
                        buffer.copy_(buffers_after_first_pass[name])

            for name, tangent in tangents.items():
                contribution = tangent * (derivative.to(tangent.dtype) / self.num_tangents)
                if name in gradient:
                    gradient[name].add_(contribution)
                else:
                    gradient[name] = contribution

        for name, parameter in parameters.items():
            if parameter.grad is None:
                parameter.grad = gradient[name]
            else:
                parameter.grad.add_(gradient[name])
        return StepOutput(first_loss, first_outputs)


def build_gradient_method(name: str, **kwargs: Any) -> GradientMethod:
    """Build the gradient method registered as ``name`` (``backprop``, ``forward_gradient``, ...).

    Keyword arguments the method's constructor does not take are dropped, so one config can
    carry ``num_tangents`` and ``tangent`` for every method.
    """
    import inspect

    method_class = gradient_methods.get(name)
    accepted = inspect.signature(method_class).parameters
    return method_class(**{k: v for k, v in kwargs.items() if k in accepted})
