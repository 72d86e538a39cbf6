"""Plot of score against depth, one line per model and metric."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

# Agg before pyplot: sweeps run on headless hosts, and no window is ever wanted.
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["DEFAULT_PLOT_METRICS", "plot_scores"]

#: Metrics drawn when none are named: the scores (not the diagnostics such as unreachable share).
DEFAULT_PLOT_METRICS = ("dpt_spearman", "time_spearman")


def plot_scores(
    df: pd.DataFrame,
    path: str | Path,
    metric: str | Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw score against depth from a tidy score table and write it as a PNG.

    ``df`` has columns ``model, layer, depth, metric, value`` (see
    :func:`~scstrata_scoring.sweep.score_layers`). ``metric`` names one metric or several;
    by default those of :data:`DEFAULT_PLOT_METRICS` present in ``df``. Each line's best layer
    is marked with a star and labelled with its layer index.

    Returns the path written.
    """
    if metric is None:
        metrics = [m for m in DEFAULT_PLOT_METRICS if m in set(df["metric"])]
    else:
        metrics = [metric] if isinstance(metric, str) else list(metric)
    rows = df[df["metric"].isin(metrics)]
    if rows.empty:
        raise ValueError(f"no rows for metrics {metrics} in the score table")

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    try:
        for (model, name), line in rows.groupby(["model", "metric"], sort=True):
            line = line.sort_values("depth")
            (handle,) = ax.plot(
                line["depth"], line["value"], marker="o", markersize=3, label=f"{model} {name}"
            )
            values = line["value"].to_numpy(dtype=float)
            if np.isfinite(values).any():
                best = line.iloc[int(np.nanargmax(values))]
                ax.plot(
                    best["depth"],
                    best["value"],
                    marker="*",
                    markersize=14,
                    color=handle.get_color(),
                    markeredgecolor="black",
                    linestyle="none",
                )
                ax.annotate(
                    f"layer {int(best['layer'])}",
                    (best["depth"], best["value"]),
                    textcoords="offset points",
                    xytext=(6, 6),
                    fontsize=8,
                )
        ax.set_xlabel("depth (layer / number of layers)")
        ax.set_ylabel("score" if len(metrics) > 1 else metrics[0])
        ax.set_xlim(-0.03, 1.03)
        ax.margins(y=0.12)  # room for the best-layer labels above the lines
        ax.set_title(title or "Score against depth (star = best layer)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        # Close explicitly: sweeps may draw many figures in one process.
        plt.close(fig)
    return path
