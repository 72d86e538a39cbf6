"""Plots of score against depth: a panel per metric and context, a line per model, baselines
as horizontal bands."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

# Agg before pyplot: sweeps run on headless hosts, and no window is ever wanted.
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .glossary import label

__all__ = ["DEFAULT_PLOT_METRICS", "plot_scores"]

#: Metrics drawn when none are named, per task: the scores, not diagnostics or proxies.
DEFAULT_PLOT_METRICS = {
    "trajectory": (
        "dpt_spearman",
        "time_spearman",
        "neighbourhood_overlap",
        "sequential_alignment",
    ),
    "perturbation": ("rsa_spearman",),
}

_BASELINE_STYLE = {"baseline:pca": "--", "baseline:expression": ":"}
_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_scores(
    df: pd.DataFrame,
    path: str | Path,
    metric: str | Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw score against depth from a tidy score table and write it as a PNG.

    ``df`` has the columns of :data:`~scstrata_scoring.sweep.SCORE_COLUMNS`. One panel per
    metric and context (``metric`` names one or several; by default those of
    :data:`DEFAULT_PLOT_METRICS` for the table's task(s) that are present). In each panel,
    one line per model (colour) with its bootstrap interval as a shaded band and its best
    layer starred; baselines (rows without a layer) as grey horizontal lines (dashed: PCA,
    dotted: expression) with their interval as a band across the whole depth axis.

    Returns the path written.
    """
    if metric is None:
        tasks = list(dict.fromkeys(df["task"])) if "task" in df else ["trajectory"]
        wanted = [m for t in tasks for m in DEFAULT_PLOT_METRICS.get(str(t), ())]
        metrics = [m for m in dict.fromkeys(wanted) if m in set(df["metric"])]
    else:
        metrics = [metric] if isinstance(metric, str) else list(metric)
    rows = df[df["metric"].isin(metrics)]
    if rows.empty:
        raise ValueError(f"no rows for metrics {metrics} in the score table")
    metrics = [m for m in metrics if m in set(rows["metric"])]
    rows = _with_defaults(rows)

    contexts = list(dict.fromkeys(rows["context"]))
    panels = [(m, c) for m in metrics for c in contexts]
    # At most two panels a row, wrapped, so that each stays readable in a report's width.
    n_cols = 1 if len(panels) == 1 else 2
    n_rows = math.ceil(len(panels) / n_cols)
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(6.0 * n_cols + 2.4, 4.2 * n_rows + 0.6),
        dpi=110,
        squeeze=False,
        layout="constrained",
    )
    try:
        models = [m for m in dict.fromkeys(rows["model"]) if not _is_baseline(m)]
        colours = {model: plt.get_cmap("tab10")(i % 10) for i, model in enumerate(models)}
        for ax, (name, context) in zip(axes.flat, panels):
            panel = rows[(rows["metric"] == name) & (rows["context"] == context)]
            _panel(ax, panel, name, colours)
            heading = f"{label(name)} ({name})"
            ax.set_title(heading if len(contexts) == 1 else f"{context}: {heading}", fontsize=11)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", fontsize=9)
        fig.suptitle(title or "Score against depth (star = best layer; bands = 95% CI)")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", bbox_inches="tight")
    finally:
        # Close explicitly: sweeps may draw many figures in one process.
        plt.close(fig)
    return path


def _panel(ax, rows: pd.DataFrame, metric: str, colours: dict) -> None:
    layered = rows[rows["layer"].notna() & ~rows["model"].map(_is_baseline)]
    for k, (model, line) in enumerate(layered.groupby("model", sort=False)):
        line = line.sort_values("depth")
        colour = colours[model]
        x = line["depth"].to_numpy(dtype=float)
        y = line["value"].to_numpy(dtype=float)
        ax.plot(x, y, color=colour, marker=_MARKERS[k % len(_MARKERS)], markersize=3, label=model)
        low, high = line["ci_low"].to_numpy(dtype=float), line["ci_high"].to_numpy(dtype=float)
        if np.isfinite(low).any():
            ax.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
        if np.isfinite(y).any():
            best = int(np.nanargmax(y))
            ax.plot(
                x[best],
                y[best],
                marker="*",
                markersize=13,
                color=colour,
                markeredgecolor="black",
                linestyle="none",
            )
            ax.annotate(
                f"layer {int(line['layer'].iloc[best])}",
                (x[best], y[best]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=7,
            )
    baselines = rows[rows["model"].map(_is_baseline)]
    for model, band in baselines.groupby("model", sort=False):
        value = float(band["value"].iloc[0])
        if not np.isfinite(value):
            continue
        style = _BASELINE_STYLE.get(model, "--")
        ax.axhline(value, color="dimgray", linestyle=style, linewidth=1.2, label=model)
        low, high = float(band["ci_low"].iloc[0]), float(band["ci_high"].iloc[0])
        if np.isfinite(low) and np.isfinite(high):
            ax.axhspan(low, high, color="gray", alpha=0.10, linewidth=0)
    ax.set_xlabel("depth (block / number of blocks; 0 = input embedding)")
    ax.set_ylabel(label(metric))
    ax.set_xlim(-0.03, 1.03)
    ax.margins(y=0.12)  # room for the best-layer labels above the lines
    ax.grid(alpha=0.3)


def _with_defaults(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.copy()
    for column, default in (("context", "all"), ("ci_low", np.nan), ("ci_high", np.nan)):
        if column not in rows:
            rows[column] = default
    rows["context"] = rows["context"].fillna("all").astype(str)
    return rows


def _is_baseline(model: object) -> bool:
    return str(model).startswith("baseline:")
