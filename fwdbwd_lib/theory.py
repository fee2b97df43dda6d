"""Forward-gradient estimator statistics: closed-form predictions and measurements.

The forward gradient along a tangent v is g = (∇L·v) v. With K independent tangents the estimate is
their mean ḡ_K. For v ~ N(0, I_d) the following hold exactly (derivations in ``book/intro.md``):

- E[ḡ_K] = ∇L,
- E‖ḡ_K − ∇L‖² = ‖∇L‖² (d + 1) / K, so E‖ḡ_K‖² = ‖∇L‖² (1 + (d + 1) / K),
- cos²(ḡ_K, ∇L) ~ Beta(K/2, (d − 1)/2), so E[cos²] = K / (d + K − 1).

For Rademacher tangents (entries ±1) E‖ḡ_K − ∇L‖² = ‖∇L‖² (d − 1) / K and, for K = 1,
E[cos²] = 1/d. For K > 1 the Rademacher cosine has no closed form here and is only measured.

The measurement uses a real model and real forward-mode AD: a logistic regression with d weights on
random data, whose directional derivatives come from ``torch.func.jvp`` (batched over tangents with
``torch.func.vmap``) and whose true gradient comes from backpropagation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from torch.func import jvp, vmap

logger = logging.getLogger(__name__)

TANGENT_DISTRIBUTIONS = ("gaussian", "rademacher")

# Tangents drawn and pushed through jvp at once; bounds memory at chunk × d float64 numbers.
TANGENT_CHUNK = 4096


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------


def predicted_statistics(d: int, num_tangents: int, tangent: str = "gaussian") -> dict[str, float]:
    """Return the closed-form expectations for the K-tangent forward gradient ḡ_K.

    Keys: ``relative_variance`` (E‖ḡ_K − ∇L‖² / ‖∇L‖²), ``relative_second_moment``
    (E‖ḡ_K‖² / ‖∇L‖²) and ``cosine_sq`` (E[cos²(ḡ_K, ∇L)]; NaN where no closed form is known).
    """
    _check_tangent(tangent)
    _check_positive("d", d)
    _check_positive("num_tangents", num_tangents)
    k = num_tangents

    if tangent == "gaussian":
        # E‖g‖² = (d + 2)‖∇L‖² for one tangent, so its trace covariance is (d + 1)‖∇L‖².
        relative_variance = (d + 1) / k
        cosine_sq = k / (d + k - 1)
    else:
        # ‖v‖² = d exactly, so E‖g‖² = d‖∇L‖² and the trace covariance is (d − 1)‖∇L‖².
        # With d = 1 every estimate equals ∇L, so the cosine is 1 for any K.
        relative_variance = (d - 1) / k
        cosine_sq = 1.0 / d if (k == 1 or d == 1) else math.nan

    return {
        "relative_variance": relative_variance,
        "relative_second_moment": 1.0 + relative_variance,
        "cosine_sq": cosine_sq,
    }


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


@dataclass
class LogisticProblem:
    """A binary logistic regression with ``d`` weights on random Gaussian data."""

    features: torch.Tensor  # (num_examples, d)
    labels: torch.Tensor  # (num_examples,), entries ±1
    weights: torch.Tensor  # (d,), the point where gradients are taken

    def loss(self, weights: torch.Tensor) -> torch.Tensor:
        """Mean logistic loss log(1 + exp(−y xᵀw)) at ``weights`` (d,)."""
        margins = self.labels * (self.features @ weights)  # (num_examples,)
        return F.softplus(-margins).mean()


def make_problem(d: int, num_examples: int = 64, seed: int = 0) -> LogisticProblem:
    """Build a logistic regression with ``d`` weights whose labels come from a random teacher."""
    _check_positive("d", d)
    generator = torch.Generator().manual_seed(seed)

    features = torch.randn(num_examples, d, generator=generator, dtype=torch.float64) / math.sqrt(d)
    teacher = torch.randn(d, generator=generator, dtype=torch.float64)
    labels = torch.sign(features @ teacher)
    labels[labels == 0] = 1.0
    weights = 0.1 * torch.randn(d, generator=generator, dtype=torch.float64)

    return LogisticProblem(features, labels, weights)


def backprop_gradient(loss_fn: Callable[[torch.Tensor], torch.Tensor], weights: torch.Tensor):
    """Return ∇L at ``weights`` computed by reverse-mode AD."""
    weights = weights.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss_fn(weights), weights)
    return gradient.detach()


def sample_tangents(
    num: int, d: int, tangent: str, generator: torch.Generator, dtype=torch.float64
) -> torch.Tensor:
    """Draw ``num`` tangents (num, d) with E[v vᵀ] = I from the named distribution."""
    _check_tangent(tangent)
    if tangent == "gaussian":
        return torch.randn(num, d, generator=generator, dtype=dtype)
    signs = torch.randint(0, 2, (num, d), generator=generator, dtype=torch.int8)
    return signs.to(dtype) * 2 - 1


def directional_derivatives(
    loss_fn: Callable[[torch.Tensor], torch.Tensor], weights: torch.Tensor, tangents: torch.Tensor
) -> torch.Tensor:
    """Return ∇L·v for each row v of ``tangents`` (num, d), computed by forward-mode AD."""

    def jvp_along(tangent: torch.Tensor) -> torch.Tensor:
        _, derivative = jvp(loss_fn, (weights,), (tangent,))
        return derivative

    return vmap(jvp_along)(tangents)  # (num,)


def sample_estimates(
    d: int, num_tangents: int, num_samples: int, tangent: str = "gaussian", seed: int = 0
) -> pd.DataFrame:
    """Draw ``num_samples`` K-tangent forward gradients and compare each with the true gradient.

    Returns one row per estimate with ``relative_sq_error`` (‖ḡ_K − ∇L‖² / ‖∇L‖²),
    ``relative_sq_norm`` (‖ḡ_K‖² / ‖∇L‖²) and ``cosine`` (cos(ḡ_K, ∇L)). The frame's
    ``attrs["relative_bias"]`` stores ‖mean ḡ_K − ∇L‖ / ‖∇L‖ over the samples.
    """
    _check_tangent(tangent)
    for name, value in (("d", d), ("num_tangents", num_tangents), ("num_samples", num_samples)):
        _check_positive(name, value)

    problem = make_problem(d, seed=seed)
    gradient = backprop_gradient(problem.loss, problem.weights)  # (d,)
    gradient_norm = gradient.norm()
    generator = torch.Generator().manual_seed(seed + 1)

    samples_per_chunk = max(1, TANGENT_CHUNK // num_tangents)
    estimate_sum = torch.zeros_like(gradient)
    columns: dict[str, list[torch.Tensor]] = {
        "relative_sq_error": [],
        "relative_sq_norm": [],
        "cosine": [],
    }

    for start in range(0, num_samples, samples_per_chunk):
        count = min(samples_per_chunk, num_samples - start)
        tangents = sample_tangents(count * num_tangents, d, tangent, generator)  # (count·K, d)
        derivatives = directional_derivatives(problem.loss, problem.weights, tangents)

        # ḡ_K = (1/K) Σ_k (∇L·v_k) v_k for each of the `count` estimates.
        tangents = tangents.view(count, num_tangents, d)
        derivatives = derivatives.view(count, num_tangents)
        estimates = torch.einsum("sk,skd->sd", derivatives, tangents) / num_tangents  # (count, d)

        estimate_norms = estimates.norm(dim=1)
        errors = (estimates - gradient).norm(dim=1)
        columns["relative_sq_error"].append(errors**2 / gradient_norm**2)
        columns["relative_sq_norm"].append(estimate_norms**2 / gradient_norm**2)
        columns["cosine"].append(estimates @ gradient / (estimate_norms * gradient_norm))
        estimate_sum += estimates.sum(dim=0)

    frame = pd.DataFrame({name: torch.cat(parts).numpy() for name, parts in columns.items()})
    mean_estimate = estimate_sum / num_samples
    frame.attrs["relative_bias"] = float((mean_estimate - gradient).norm() / gradient_norm)
    return frame


def measure_estimator(
    d: int, num_tangents: int, num_samples: int, tangent: str = "gaussian", seed: int = 0
) -> dict[str, float]:
    """Measure the K-tangent forward gradient's variance and alignment next to the predicted values.

    Returns a flat dict with these keys:

    - the setting: ``d``, ``num_tangents``, ``tangent``, ``num_samples``, ``seed``;
    - measured means with standard errors: ``relative_variance``, ``relative_variance_se``,
      ``relative_second_moment``, ``cosine_sq``, ``cosine_sq_se``, ``cosine_mean``, ``cosine_min``;
    - ``relative_bias``, ‖mean ḡ_K − ∇L‖ / ‖∇L‖, which shrinks like
      sqrt(relative_variance / num_samples) for an unbiased estimator;
    - the closed-form values of :func:`predicted_statistics`, prefixed ``predicted_``.
    """
    samples = sample_estimates(d, num_tangents, num_samples, tangent=tangent, seed=seed)
    cosine_sq = samples["cosine"] ** 2
    root_n = math.sqrt(num_samples)

    result: dict[str, float] = {
        "d": d,
        "num_tangents": num_tangents,
        "tangent": tangent,
        "num_samples": num_samples,
        "seed": seed,
        "relative_variance": samples["relative_sq_error"].mean(),
        "relative_variance_se": samples["relative_sq_error"].std() / root_n,
        "relative_second_moment": samples["relative_sq_norm"].mean(),
        "cosine_sq": cosine_sq.mean(),
        "cosine_sq_se": cosine_sq.std() / root_n,
        "cosine_mean": samples["cosine"].mean(),
        "cosine_min": samples["cosine"].min(),
        "relative_bias": samples.attrs["relative_bias"],
    }
    predicted = predicted_statistics(d, num_tangents, tangent)
    result.update({f"predicted_{name}": value for name, value in predicted.items()})
    return {name: _plain(value) for name, value in result.items()}


def theory_table(
    dims,
    ks,
    num_samples: int = 400,
    tangents=TANGENT_DISTRIBUTIONS,
    seed: int = 0,
) -> pd.DataFrame:
    """Run :func:`measure_estimator` over every (tangent, d, K) and return one row per setting."""
    rows = []
    for tangent in tangents:
        for d in dims:
            for k in ks:
                logger.debug("measuring tangent=%s d=%d K=%d", tangent, d, k)
                rows.append(measure_estimator(d, k, num_samples, tangent=tangent, seed=seed))
    return pd.DataFrame(rows)


def comparison_table(table: pd.DataFrame, num_tangents: int) -> pd.DataFrame:
    """Select the rows of :func:`theory_table` for one K, measured next to predicted, by (tangent, d)."""
    rows = table[table["num_tangents"] == num_tangents]
    if rows.empty:
        available = sorted(table["num_tangents"].unique())
        raise ValueError(f"no rows with num_tangents={num_tangents}; the table has K in {available}")
    columns = {
        "relative_variance": "variance, measured",
        "predicted_relative_variance": "variance, predicted",
        "cosine_sq": "E[cos²], measured",
        "predicted_cosine_sq": "E[cos²], predicted",
    }
    return rows.set_index(["tangent", "d"])[list(columns)].rename(columns=columns)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

_COLORS = {"gaussian": "#1f77b4", "rademacher": "#d62728"}


def variance_figure(table: pd.DataFrame) -> go.Figure:
    """Plot relative variance against d, measured and predicted, with a slider over K."""
    ks = sorted(table["num_tangents"].unique())
    tangents = list(table["tangent"].unique())
    figure = go.Figure()

    # Each K owns 2 traces per tangent distribution (measured, predicted); the slider shows one K.
    for k in ks:
        for tangent in tangents:
            rows = table[(table["num_tangents"] == k) & (table["tangent"] == tangent)].sort_values("d")
            figure.add_trace(
                go.Scatter(
                    x=rows["d"],
                    y=rows["relative_variance"],
                    error_y={"type": "data", "array": 2 * rows["relative_variance_se"]},
                    mode="markers",
                    marker={"color": _COLORS.get(tangent), "size": 8},
                    name=f"{tangent}, measured",
                    visible=bool(k == ks[0]),
                )
            )
            figure.add_trace(
                go.Scatter(
                    x=rows["d"],
                    y=rows["predicted_relative_variance"],
                    mode="lines",
                    line={"color": _COLORS.get(tangent), "dash": "dash"},
                    name=f"{tangent}, predicted " + ("(d+1)/K" if tangent == "gaussian" else "(d−1)/K"),
                    visible=bool(k == ks[0]),
                )
            )

    traces_per_k = 2 * len(tangents)
    steps = []
    for index, k in enumerate(ks):
        first, last = index * traces_per_k, (index + 1) * traces_per_k
        visible = [first <= i < last for i in range(len(figure.data))]
        steps.append({"method": "update", "label": str(k), "args": [{"visible": visible}]})

    num_samples = int(table["num_samples"].iloc[0])
    figure.update_layout(
        title=f"Variance of the K-tangent forward gradient ({num_samples} estimates per point, ±2 s.e.)",
        xaxis={"title": "parameter count d", "type": "log"},
        yaxis={"title": "E‖ḡ_K − ∇L‖² / ‖∇L‖²", "type": "log"},
        sliders=[
            {"active": 0, "currentvalue": {"prefix": "tangents K = "}, "steps": steps, "pad": {"t": 50}}
        ],
        legend={"x": 0.01, "y": 0.99},
        height=520,
    )
    return figure


def cosine_figure(table: pd.DataFrame) -> go.Figure:
    """Plot E[cos²(ḡ_K, ∇L)] against d, one colour per K, measured points and predicted lines."""
    ks = sorted(table["num_tangents"].unique())
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    symbols = {"gaussian": "circle", "rademacher": "x"}
    figure = go.Figure()

    for index, k in enumerate(ks):
        color = palette[index % len(palette)]
        for tangent in table["tangent"].unique():
            rows = table[(table["num_tangents"] == k) & (table["tangent"] == tangent)].sort_values("d")
            figure.add_trace(
                go.Scatter(
                    x=rows["d"],
                    y=rows["cosine_sq"],
                    error_y={"type": "data", "array": 2 * rows["cosine_sq_se"]},
                    mode="markers",
                    marker={"color": color, "symbol": symbols.get(tangent, "circle"), "size": 8},
                    name=f"K={k}, {tangent}",
                    legendgroup=str(k),
                )
            )
        gaussian = table[(table["num_tangents"] == k) & (table["tangent"] == "gaussian")].sort_values("d")
        if len(gaussian):
            figure.add_trace(
                go.Scatter(
                    x=gaussian["d"],
                    y=gaussian["predicted_cosine_sq"],
                    mode="lines",
                    line={"color": color, "dash": "dash"},
                    name=f"K={k}, K/(d+K−1)",
                    legendgroup=str(k),
                )
            )

    num_samples = int(table["num_samples"].iloc[0])
    figure.update_layout(
        title=f"Alignment with the true gradient ({num_samples} estimates per point, ±2 s.e.)",
        xaxis={"title": "parameter count d", "type": "log"},
        yaxis={"title": "E[cos²(ḡ_K, ∇L)]", "type": "log"},
        height=520,
    )
    return figure


def cosine_histogram(samples: pd.DataFrame, title: str) -> go.Figure:
    """Plot the distribution of cos(ḡ_K, ∇L) from :func:`sample_estimates`."""
    figure = go.Figure(go.Histogram(x=samples["cosine"], nbinsx=40, histnorm="probability"))
    figure.update_layout(
        title=title,
        xaxis={"title": "cos(ḡ_K, ∇L)", "range": [-1, 1]},
        yaxis={"title": "fraction of estimates"},
        height=380,
    )
    return figure


def playground(num_samples: int = 300):
    """Build an ipywidgets panel that re-measures the estimator as d, K and the tangent change.

    It needs a running kernel; a static page shows at most the state it was saved with.
    """
    import ipywidgets as widgets
    from IPython.display import display

    def show(log2_d: int, num_tangents: int, tangent: str) -> None:
        d = 2**log2_d
        samples = sample_estimates(d, num_tangents, num_samples, tangent=tangent)
        predicted = predicted_statistics(d, num_tangents, tangent)
        measured = np.mean(samples["cosine"] ** 2)
        title = (
            f"d={d}, K={num_tangents}, {tangent}: E[cos²] measured {measured:.4f}, "
            f"predicted {predicted['cosine_sq']:.4f}"
        )
        display(cosine_histogram(samples, title))

    return widgets.interactive(
        show,
        log2_d=widgets.IntSlider(value=8, min=1, max=14, description="log₂ d"),
        num_tangents=widgets.IntSlider(value=1, min=1, max=64, description="K"),
        tangent=widgets.Dropdown(options=list(TANGENT_DISTRIBUTIONS), description="tangent"),
    )


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _check_tangent(tangent: str) -> None:
    if tangent not in TANGENT_DISTRIBUTIONS:
        raise ValueError(
            f"invalid tangent distribution {tangent!r}; expected one of {TANGENT_DISTRIBUTIONS}"
        )


def _check_positive(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _plain(value):
    # NumPy scalars would print as np.float64(...) in tables and JSON; store Python numbers.
    return value.item() if isinstance(value, np.generic) else value
