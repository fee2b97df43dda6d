"""Tables and Plotly figures of the cost benchmark's records, for the cost chapter.

``load_cost_record`` reads one record written by ``python -m fwdbwd_lib.bench``;
``measurements_frame`` turns its measurements into a DataFrame with one row per (model, size,
batch size, K, variant). The other functions take that frame (or the record) and return a
DataFrame or a ``plotly.graph_objects.Figure``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fwdbwd_lib.plots import FALLBACK_COLORS

VARIANT_LABELS = {
    "forward": "inference forward",
    "backprop": "backprop step",
    "fg_sequential": "forward-gradient step (K passes)",
    "fg_vmap": "forward-gradient step (vmap over K)",
    "tangent_draw": "drawing K tangents",
}
VARIANT_COLORS = {
    "forward": "#7f7f7f", "backprop": "#1f77b4", "fg_sequential": "#d62728",
    "fg_vmap": "#ff7f0e", "tangent_draw": "#2ca02c",
}
STEP_VARIANTS = ("backprop", "fg_sequential", "fg_vmap")
# Columns absent from records written with count_flops off, or where every variant ran.
OPTIONAL_COLUMNS = ("flops", "flop_ratio_to_forward", "flop_ratio_to_backprop", "reason")

# Baydin et al. 2022, "Gradients without Backpropagation" (arXiv 2202.08587), report the runtime
# of a forward-gradient step at about 0.59 of a backprop step for their MNIST MLP. The value is
# approximate: it is the ratio of the per-step runtimes they give, not a figure they tabulate.
BAYDIN_2022_FG_OVER_BACKPROP = 0.59

# Targets for the quick CPU setting, checked in the chapter's closing table.
TARGETS = {
    "fg_over_forward": 1.5,
    "fg_over_backprop": 0.8,
    "tangent_draw_share": 0.10,
    "loop_overhead_percent": 5.0,
    "fg_memory_over_forward": 1.3,
}
TARGET_MODEL, TARGET_BATCH = "convnet", 128


def load_cost_record(runs_dir: str | Path, setting: str = "quick",
                     device_type: str = "cpu") -> dict[str, Any]:
    """Read ``<runs_dir>/cost_<setting>_<device_type>.json``.

    Raises FileNotFoundError naming the records that exist and the command that writes one.
    """
    path = Path(runs_dir) / f"cost_{setting}_{device_type}.json"
    if not path.is_file():
        found = sorted(p.name for p in Path(runs_dir).glob("cost_*.json")) if Path(
            runs_dir).is_dir() else []
        raise FileNotFoundError(
            f"no cost record at {path} (records there: {', '.join(found) or 'none'}); write one "
            f"with: python -m fwdbwd_lib.bench --setting {setting} --device "
            f"{'cuda:0' if device_type == 'cuda' else 'cpu'} --out {runs_dir}"
        )
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def measurements_frame(record: dict[str, Any]) -> pd.DataFrame:
    """Return one row per measurement, with ``ok`` true where the variant ran."""
    frame = pd.DataFrame(record["measurements"])
    for column in OPTIONAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan
    frame["ok"] = frame["status"] == "ok"
    frame["label"] = frame["variant"].map(VARIANT_LABELS)
    return frame


def _base(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["is_base_size"] & frame["is_base_batch"]]


def _value(frame: pd.DataFrame, variant: str, column: str, num_tangents: int = 1) -> float:
    rows = frame[(frame["variant"] == variant) & (frame["num_tangents"] == num_tangents)
                 & frame["ok"]]
    if column not in rows.columns or rows.empty or pd.isna(rows[column].iloc[0]):
        return np.nan
    return float(rows[column].iloc[0])


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

def base_point_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Tabulate each model's base point (K = 1): times, memory, and ratios to the forward pass."""
    rows = []
    for model, point in _base(frame).groupby("model", sort=False):
        forward_ms = _value(point, "forward", "median_ms")
        row = {
            "model": model,
            "parameters": int(point["num_parameters"].iloc[0]),
            "batch": int(point["batch_size"].iloc[0]),
            "forward (ms)": forward_ms,
        }
        for variant in STEP_VARIANTS:
            row[f"{variant} (× forward)"] = _value(point, variant, "time_ratio_to_forward")
        row["fg_sequential / backprop"] = _value(point, "fg_sequential", "time_ratio_to_backprop")
        row["forward peak (MiB)"] = _value(point, "forward", "peak_memory_mib")
        for variant in STEP_VARIANTS:
            row[f"{variant} memory (× forward)"] = _value(point, variant, "memory_ratio_to_forward")
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def absolute_table(frame: pd.DataFrame) -> pd.DataFrame:
    """List every measurement: median, quartiles, timed steps, peak memory and status."""
    columns = ["model", "size", "batch_size", "num_tangents", "variant", "num_parameters",
               "median_ms", "q25_ms", "q75_ms", "timed_steps", "peak_memory_mib",
               "time_ratio_to_forward", "status"]
    return frame[columns].sort_values(["model", "size", "batch_size", "num_tangents"])


def unsupported_table(frame: pd.DataFrame) -> pd.DataFrame:
    """List the measurements that did not run, with the error that stopped them."""
    failed = frame[~frame["ok"]]
    if failed.empty:
        return pd.DataFrame(columns=["model", "variant", "status", "reason", "points"])
    return (failed.groupby(["model", "variant", "status", "reason"], sort=False)
            .size().rename("points").reset_index())


def memory_per_example(frame: pd.DataFrame) -> pd.DataFrame:
    """Fit the slope of peak memory over batch size (KiB per example) on each model's batch axis.

    The line is a least-squares fit through (batch size, peak MiB) at the base size with K = 1.
    Its slope is the memory each extra example costs, and an activation tape makes it grow with
    depth. A variant whose peak changes by less than 1 % across the batches gets no slope (NaN).
    Such a peak is set by memory that does not scale with the batch, for example the tangent and
    the gradient estimate of every parameter.
    """
    rows = []
    batch_axis = frame[frame["is_base_size"] & (frame["num_tangents"] == 1) & frame["ok"]]
    for model, points in batch_axis.groupby("model", sort=False):
        row = {"model": model}
        for variant in ("forward", "backprop", "fg_sequential", "fg_vmap"):
            series = points[points["variant"] == variant].dropna(subset=["peak_memory_mib"])
            peaks = series["peak_memory_mib"]
            flat = len(peaks) and peaks.max() - peaks.min() < 0.01 * peaks.max()
            if series["batch_size"].nunique() >= 2 and not flat:
                slope = np.polyfit(series["batch_size"], series["peak_memory_mib"], 1)[0]
                row[f"{variant} (KiB/example)"] = slope * 1024.0
            else:
                row[f"{variant} (KiB/example)"] = np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def tangent_draw_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Tabulate the time to draw K tangents as a share of a sequential step with K tangents."""
    base = _base(frame)
    rows = []
    for (model, k), point in base.groupby(["model", "num_tangents"], sort=False):
        draw = _value(point, "tangent_draw", "median_ms", k)
        step = _value(point, "fg_sequential", "median_ms", k)
        rows.append({"model": model, "K": int(k), "parameters": int(point["num_parameters"].iloc[0]),
                     "draw (ms)": draw, "fg_sequential step (ms)": step,
                     "share of step": draw / step})
    return pd.DataFrame(rows)


def dense_flop_ratios(record: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """FLOP counts of the MLP's linear layers against its measured time ratios, per width.

    For a linear layer y = W x with m×n weights and batch B, the forward costs 2Bmn FLOPs. The jvp
    along a weight tangent adds dW·x and W·dx, 2Bmn each, but the first layer has no dx. Backprop
    adds the weight gradient and the input gradient, 2Bmn each, but the first layer needs no
    input gradient. Biases, activations, the loss and the optimizer update are left out.
    """
    plan = next((p for p in record["plans"] if p["model"] == "mlp"), None)
    if plan is None:
        return pd.DataFrame()
    points = frame[(frame["model"] == "mlp") & frame["is_base_batch"]
                   & (frame["num_tangents"] == 1)]
    rows = []
    for size, point in points.groupby("size"):
        kwargs = point["model_kwargs"].iloc[0]
        widths = [3 * 32 * 32, *kwargs["hidden_sizes"], 10]
        layer_macs = [m * n for m, n in zip(widths[:-1], widths[1:])]
        forward = sum(layer_macs)
        jvp_extra = layer_macs[0] + 2 * sum(layer_macs[1:])
        backward = sum(layer_macs) + sum(layer_macs[1:])
        rows.append({
            "hidden units": int(size),
            "parameters": int(point["num_parameters"].iloc[0]),
            "jvp FLOPs (× forward)": (forward + jvp_extra) / forward,
            "backprop FLOPs (× forward)": (forward + backward) / forward,
            "fg_sequential measured (× forward)": _value(point, "fg_sequential",
                                                         "time_ratio_to_forward"),
            "backprop measured (× forward)": _value(point, "backprop", "time_ratio_to_forward"),
            "fg_sequential / backprop measured": _value(point, "fg_sequential",
                                                        "time_ratio_to_backprop"),
        })
    return pd.DataFrame(rows).set_index("hidden units")


def target_table(record: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """Set the quick setting's targets against the measured values.

    Time targets are read at convnet, batch 128, K = 1. Memory targets are read at each model's
    largest measured batch (base size, K = 1).
    """
    rows = []
    point = frame[(frame["model"] == TARGET_MODEL) & (frame["batch_size"] == TARGET_BATCH)
                  & frame["is_base_size"]]

    def add(quantity: str, where: str, value: float, target: float, kind: str = "≤") -> None:
        rows.append({"quantity": quantity, "where": where, "measured": value,
                     "target": f"{kind} {target:g}", "met": bool(value <= target)
                     if np.isfinite(value) else None})

    where = f"{TARGET_MODEL}, batch {TARGET_BATCH}, K = 1"
    if len(point):
        add("forward-gradient step / inference forward (time)", where,
            _value(point, "fg_sequential", "time_ratio_to_forward"), TARGETS["fg_over_forward"])
        add("forward-gradient step / backprop step (time)", where,
            _value(point, "fg_sequential", "time_ratio_to_backprop"), TARGETS["fg_over_backprop"])
        add("drawing the tangent / forward-gradient step (time)", where,
            _value(point, "tangent_draw", "median_ms") / _value(point, "fg_sequential",
                                                                "median_ms"),
            TARGETS["tangent_draw_share"])
    for overhead in record.get("loop_overhead", []):
        add("library loop overhead over a hand-written loop (%)",
            f"{overhead['model']}, batch {overhead['batch_size']}, backprop",
            overhead["overhead_percent"], TARGETS["loop_overhead_percent"])

    batch_axis = frame[frame["is_base_size"] & (frame["num_tangents"] == 1)]
    for model, points in batch_axis.groupby("model", sort=False):
        largest = points[points["batch_size"] == points["batch_size"].max()]
        where = f"{model}, batch {int(largest['batch_size'].iloc[0])}"
        fg_memory = _value(largest, "fg_sequential", "memory_ratio_to_forward")
        add("forward-gradient peak memory / inference peak", where, fg_memory,
            TARGETS["fg_memory_over_forward"])
        rows[-1]["backprop peak / inference peak"] = _value(largest, "backprop",
                                                            "memory_ratio_to_forward")
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

def ratio_bars(frame: pd.DataFrame, title: str) -> go.Figure:
    """Plot each step variant's time and peak memory as multiples of the inference forward."""
    base = _base(frame)
    base = base[base["num_tangents"] == 1]
    figure = make_subplots(rows=1, cols=2, subplot_titles=(
        "time per step (× inference forward)", "peak memory (× inference forward)"))
    for variant in STEP_VARIANTS:
        rows = base[base["variant"] == variant]
        for column, (ratio, absolute, unit) in enumerate(
                [("time_ratio_to_forward", "median_ms", "ms"),
                 ("memory_ratio_to_forward", "peak_memory_mib", "MiB")], start=1):
            figure.add_trace(go.Bar(
                x=rows["model"], y=rows[ratio], name=VARIANT_LABELS[variant],
                marker_color=VARIANT_COLORS[variant], legendgroup=variant,
                showlegend=column == 1,
                customdata=np.stack([rows[absolute], rows["batch_size"]], axis=-1),
                hovertemplate=(f"%{{x}}, batch %{{customdata[1]}}<br>%{{y:.2f}}× forward"
                               f"<br>%{{customdata[0]:.1f}} {unit}<extra></extra>"),
            ), row=1, col=column)
    for column in (1, 2):
        figure.add_hline(y=1.0, line_dash="dot", line_color="#7f7f7f", row=1, col=column)
    figure.update_layout(title=title, barmode="group", template="plotly_white",
                         legend={"orientation": "h", "y": -0.25}, margin={"t": 100})
    figure.update_yaxes(title_text="ratio to inference forward", row=1, col=1)
    return figure


def per_model_lines(frame: pd.DataFrame, x: str, y: str, variants: tuple[str, ...], title: str,
                    x_title: str, y_title: str, log_x: bool = True, log_y: bool = False,
                    hover_unit: str = "") -> go.Figure:
    """Plot ``y`` against ``x`` per variant, with a dropdown that picks the model."""
    figure = go.Figure()
    owners: list[str] = []
    model_names = list(dict.fromkeys(frame["model"]))
    for model_index, model in enumerate(model_names):
        rows = frame[(frame["model"] == model) & frame["ok"]]
        for variant_index, variant in enumerate(variants):
            series = rows[rows["variant"] == variant].sort_values(x)
            color = VARIANT_COLORS.get(variant, FALLBACK_COLORS[variant_index % 7])
            figure.add_trace(go.Scatter(
                x=series[x], y=series[y], mode="lines+markers", name=VARIANT_LABELS[variant],
                line={"color": color}, visible=model_index == 0,
                customdata=np.stack([series["median_ms"], series["peak_memory_mib"].astype(float),
                                     series["batch_size"], series["num_parameters"]], axis=-1)
                if len(series) else None,
                hovertemplate=(f"{VARIANT_LABELS[variant]}<br>{x_title}: %{{x}}<br>"
                               f"{y_title}: %{{y:.3g}}{hover_unit}<br>median %{{customdata[0]:.2f}}"
                               " ms, peak %{customdata[1]:.1f} MiB<br>batch %{customdata[2]}, "
                               "%{customdata[3]:,} parameters<extra></extra>"),
            ))
            owners.append(model)
    buttons = [dict(label=model, method="update",
                    args=[{"visible": [owner == model for owner in owners]},
                          {"title.text": f"{title}: {model}"}])
               for model in model_names]
    figure.update_layout(
        title=f"{title}: {model_names[0]}" if model_names else title,
        xaxis_title=x_title, yaxis_title=y_title, template="plotly_white",
        xaxis_type="log" if log_x else "linear", yaxis_type="log" if log_y else "linear",
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.02,
                          yanchor="bottom", showactive=True)],
        margin={"t": 110}, legend={"orientation": "h", "y": -0.25},
    )
    return figure


def batch_axis(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["is_base_size"] & (frame["num_tangents"] == 1)]


def size_axis(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["is_base_batch"] & (frame["num_tangents"] == 1)]


def tangent_axis(frame: pd.DataFrame) -> pd.DataFrame:
    return _base(frame)


def tangent_draw_bars(table: pd.DataFrame, title: str) -> go.Figure:
    """Plot the share of a sequential step spent drawing the tangents, per model and K."""
    figure = go.Figure()
    for index, (k, rows) in enumerate(table.groupby("K")):
        figure.add_trace(go.Bar(
            x=rows["model"], y=100.0 * rows["share of step"], name=f"K = {k}",
            marker_color=FALLBACK_COLORS[index % len(FALLBACK_COLORS)],
            customdata=np.stack([rows["draw (ms)"], rows["parameters"]], axis=-1),
            hovertemplate=("%{x}: %{y:.1f} % of the step<br>draw %{customdata[0]:.2f} ms for "
                           "%{customdata[1]:,} parameters per tangent<extra></extra>"),
        ))
    figure.update_layout(title=title, barmode="group", template="plotly_white",
                         yaxis_title="tangent draw time (% of the forward-gradient step)")
    return figure


def loop_overhead_bars(record: dict[str, Any], title: str) -> go.Figure:
    """Plot the median iteration time of a hand-written loop and of the library's loop."""
    figure = go.Figure()
    rows = record.get("loop_overhead", [])
    for key, label, color in (("hand_written_median_ms", "hand-written loop", "#7f7f7f"),
                              ("library_median_ms", "fwdbwd_lib.training.train", "#1f77b4")):
        figure.add_trace(go.Bar(
            x=[f"{row['model']} (batch {row['batch_size']})" for row in rows],
            y=[row[key] for row in rows], name=label, marker_color=color,
            text=[f"{row['overhead_percent']:+.1f} %" if key == "library_median_ms" else ""
                  for row in rows],
            textposition="outside",
            hovertemplate="%{x}<br>%{y:.1f} ms per iteration<extra></extra>",
        ))
    figure.update_layout(title=title, barmode="group", template="plotly_white",
                         yaxis_title="median time per loop iteration (ms)")
    return figure


def flop_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Tabulate counted FLOPs and measured time per step variant at each base point, K = 1.

    Both are multiples of the inference forward at the same point. ``time per FLOP`` divides the
    time ratio by the FLOP ratio: 1 means the step ran its arithmetic as fast as the forward pass.
    """
    rows = []
    base = _base(frame)
    for model, point in base.groupby("model", sort=False):
        for variant in STEP_VARIANTS:
            flops = _value(point, variant, "flop_ratio_to_forward")
            time = _value(point, variant, "time_ratio_to_forward")
            rows.append({"model": model, "variant": variant, "FLOPs (× forward)": flops,
                         "time (× forward)": time, "time per FLOP (× forward)": time / flops})
    return pd.DataFrame(rows)
