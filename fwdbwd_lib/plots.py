"""Plotly figure builders shared by the book's chapters.

Every builder takes the DataFrames of ``fwdbwd_lib.study.load_study`` (or ``load_runs``) and
returns a ``plotly.graph_objects.Figure``. Interactive controls are Plotly's own dropdown menus
(``updatemenus``), so they work in the static HTML book without a kernel.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

METHOD_COLORS = {"backprop": "#1f77b4", "forward_gradient": "#d62728"}
METHOD_LABELS = {"backprop": "backprop", "forward_gradient": "forward gradient"}
X_AXES = {"step": "training step", "train_time_s": "training time (s, inside steps)"}
FALLBACK_COLORS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def method_color(method: str, index: int = 0) -> str:
    return METHOD_COLORS.get(method, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _band(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean and standard deviation of ``y`` over runs at each step, with the mean of ``x``."""
    grouped = frame.groupby("step")
    return pd.DataFrame({
        "x": grouped[x].mean(),
        "mean": grouped[y].mean(),
        "std": grouped[y].std(ddof=1).fillna(0.0),
        "runs": grouped[y].count(),
    }).reset_index()


def _smooth(values: pd.Series, window: int) -> pd.Series:
    return values.rolling(window, min_periods=1).mean() if window > 1 else values


def learning_curves(steps: pd.DataFrame, evals: pd.DataFrame, title: str,
                    smoothing: int = 10) -> go.Figure:
    """Loss and accuracy curves per method (mean ± std over seeds), with dropdowns.

    A dropdown picks the curve (training loss per step, validation loss, validation accuracy,
    training-epoch accuracy) and the x-axis (step, or training time in seconds).
    Training loss per step is smoothed with a running mean over ``smoothing`` steps.
    """
    panels = [
        ("training loss (per step)", steps, "loss", None),
        ("validation loss", evals, "loss", "validation"),
        ("validation accuracy", evals, "accuracy", "validation"),
        ("training accuracy (epoch mean)", evals, "accuracy", "train"),
    ]
    figure = go.Figure()
    visibility: list[tuple[int, str]] = []  # (panel index, x axis) of each trace
    for panel_index, (label, frame, column, split) in enumerate(panels):
        data = frame if split is None else frame[frame["split"] == split]
        for x in X_AXES:
            for index, (method, runs) in enumerate(data.groupby("config.method", sort=False)):
                band = _band(runs, x, column)
                seeds = runs["run_dir"].nunique()
                mean = _smooth(band["mean"], smoothing) if split is None else band["mean"]
                std = _smooth(band["std"], smoothing) if split is None else band["std"]
                color = method_color(method, index)
                visible = panel_index == 0 and x == "step"
                figure.add_trace(go.Scatter(
                    x=pd.concat([band["x"], band["x"][::-1]]),
                    y=pd.concat([mean + std, (mean - std)[::-1]]),
                    fill="toself", fillcolor=color, opacity=0.2, line={"width": 0},
                    hoverinfo="skip", showlegend=False, visible=visible,
                    legendgroup=method,
                ))
                figure.add_trace(go.Scatter(
                    x=band["x"], y=mean, mode="lines" if split is None else "lines+markers",
                    name=f"{method_label(method)} ({seeds} seeds)", line={"color": color},
                    legendgroup=method, visible=visible,
                    hovertemplate=f"{method_label(method)}<br>%{{x:.4g}}: %{{y:.4f}}<extra></extra>",
                ))
                visibility += [(panel_index, x), (panel_index, x)]

    def mask(panel_index: int, x: str) -> list[bool]:
        return [entry == (panel_index, x) for entry in visibility]

    # One dropdown lists every (curve, x-axis) pair, because Plotly's buttons set the whole
    # visibility list and cannot combine the states of two menus.
    buttons = []
    for x, x_label in X_AXES.items():
        for i, (label, *_rest) in enumerate(panels):
            buttons.append(dict(
                label=f"{label} vs {'step' if x == 'step' else 'time'}", method="update",
                args=[{"visible": mask(i, x)},
                      {"yaxis.title.text": label, "xaxis.title.text": x_label}],
            ))
    figure.update_layout(
        title=title,
        xaxis_title=X_AXES["step"],
        yaxis_title=panels[0][0],
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right",
                          y=1.02, yanchor="bottom", showactive=True)],
        margin={"t": 120},
        legend={"orientation": "h", "y": -0.2},
        template="plotly_white",
    )
    return figure


def learning_rate_grid(tuning: pd.DataFrame, title: str) -> go.Figure:
    """Final validation accuracy against learning rate per method; diverged runs marked ✕."""
    figure = go.Figure()
    for index, (method, runs) in enumerate(tuning.groupby("config.method", sort=False)):
        runs = runs.sort_values("config.optimizer.lr")
        color = method_color(method, index)
        finished = runs[runs["status"] == "finished"]
        diverged = runs[runs["status"] != "finished"]
        figure.add_trace(go.Scatter(
            x=finished["config.optimizer.lr"], y=finished["summary.final_validation_accuracy"],
            mode="lines+markers", name=method_label(method), line={"color": color},
            hovertemplate="lr %{x:.3g}<br>validation accuracy %{y:.4f}<extra></extra>",
        ))
        if not diverged.empty:
            figure.add_trace(go.Scatter(
                x=diverged["config.optimizer.lr"], y=[0.0] * len(diverged), mode="markers",
                marker={"symbol": "x", "size": 12, "color": color},
                name=f"{method_label(method)}: diverged",
                text=diverged["status_message"],
                hovertemplate="lr %{x:.3g}<br>%{text}<extra></extra>",
            ))
    figure.update_layout(
        title=title, xaxis_title="learning rate (log scale)",
        yaxis_title="final validation accuracy", xaxis_type="log", template="plotly_white",
    )
    return figure


def test_accuracy_bars(final: pd.DataFrame, title: str) -> go.Figure:
    """Test accuracy per method: mean ± sample standard deviation over seeds, seeds as dots."""
    figure = go.Figure()
    for index, (method, runs) in enumerate(final.groupby("config.method", sort=False)):
        accuracy = runs["summary.test_accuracy"].dropna()
        color = method_color(method, index)
        std = accuracy.std(ddof=1) if len(accuracy) > 1 else 0.0
        figure.add_trace(go.Bar(
            x=[method_label(method)], y=[accuracy.mean()], marker_color=color,
            error_y={"type": "data", "array": [std]}, name=f"{method_label(method)}",
            hovertemplate=(f"mean %{{y:.4f}} ± {std:.4f} over {len(accuracy)} seeds"
                           "<extra></extra>"),
        ))
        figure.add_trace(go.Scatter(
            x=[method_label(method)] * len(accuracy), y=accuracy, mode="markers",
            marker={"color": "black", "size": 7}, name=f"{method_label(method)} seeds",
            text=runs.loc[accuracy.index, "config.seed"].astype(str),
            hovertemplate="seed %{text}: %{y:.4f}<extra></extra>", showlegend=False,
        ))
    figure.update_layout(title=title, yaxis_title="test accuracy", template="plotly_white",
                         showlegend=False)
    return figure


def cost_bars(final: pd.DataFrame, title: str) -> go.Figure:
    """Median step time and step-local peak memory per method, side by side, with ratios."""
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=(
        "median time per training step (ms)", "peak memory of a training step (MiB)"))
    finished = final[final["status"] == "finished"]
    reference = finished[finished["config.method"] == "backprop"]
    for index, (method, runs) in enumerate(finished.groupby("config.method", sort=False)):
        color = method_color(method, index)
        for column, (field, unit) in enumerate(
                [("summary.median_step_time_ms", "ms"), ("summary.peak_memory_mib", "MiB")], start=1):
            value = runs[field].median()
            ratio = value / reference[field].median() if not reference.empty else math.nan
            figure.add_trace(go.Bar(
                x=[method_label(method)], y=[value], marker_color=color, showlegend=False,
                text=[f"{value:.1f} {unit}" + ("" if np.isnan(ratio) else f" ({ratio:.2f}× backprop)")],
                textposition="outside",
                hovertemplate=f"%{{y:.2f}} {unit}, median over {len(runs)} runs<extra></extra>",
            ), row=1, col=column)
    figure.update_layout(title=title, template="plotly_white", margin={"t": 100})
    return figure
