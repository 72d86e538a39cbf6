"""A self-contained HTML report of a layer sweep."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .plot import plot_scores
from .subsample import subsample_note
from .summary import MAIN_METRIC, summarise

__all__ = ["summary_line", "write_report"]

_CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 72em; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f3f3f3; }
.notes li { color: #8a4b00; }
.sig { color: #006400; font-weight: bold; }
.muted { color: #666; font-size: 0.9em; }
img { max-width: 100%; }
"""

_RESAMPLED = {"trajectory": "cells", "perturbation": "perturbations"}


def write_report(
    df: pd.DataFrame,
    out_dir: str | Path,
    notes: list[str] | None = None,
    *,
    summary: pd.DataFrame | None = None,
    plot_name: str | None = None,
    title: str = "Layer scores",
) -> Path:
    """Write ``out_dir/report.html``: notes, best layers, plot, baselines, proxies, scores.

    ``df`` is a sweep's score table and ``summary`` its summary
    (:class:`~scstrata_scoring.sweep.SweepResult`); without ``summary`` one is computed from
    ``df`` and gains carry no interval. The plot ``out_dir/plot_name`` (default
    ``<task>.png``) is drawn first if it does not exist yet, and embedded as a data URI so the
    HTML file stands alone. ``notes`` are shown line by line, verbatim (only HTML-escaped).

    Returns the path of the report.
    """
    sampled = subsample_note(df)  # scored on a subsample: say how many cells, which seed
    notes = [*(notes or []), *([sampled] if sampled else [])]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [str(t) for t in dict.fromkeys(df["task"])] if "task" in df else ["trajectory"]
    png = out_dir / (plot_name or f"{tasks[0]}.png")
    if not png.exists():
        plot_scores(df, png)
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    if summary is None:
        summary = summarise(df)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>scstrata: {html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if notes:
        parts.append('<h2>Notes</h2><ul class="notes">')
        parts.extend(f"<li>{html.escape(line)}</li>" for line in notes)
        parts.append("</ul>")
    parts.append("<h2>Best layer per model and context</h2>")
    parts.append(_summary_html(summary, tasks))
    parts.append(f'<img alt="score against depth" src="data:image/png;base64,{image}">')
    parts.append("<h2>Baselines</h2>")
    parts.append(_baselines_html(df))
    parts.append("<h2>Label-free proxies</h2>")
    parts.append(_proxies_html(summary))
    parts.append("<h2>All scores</h2>")
    parts.append(_table_html(df))
    parts.append("</body></html>")
    path = out_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def summary_line(best: Mapping[str, Any]) -> str:
    """One sentence: the best layer, its depth, its gain over the final layer (and its CI)."""
    context = best.get("context")
    who = f"{best['model']}" + (f" [{context}]" if context not in (None, "all") else "")
    line = (
        f"{who}: best layer {best['best_layer']} (depth {best['best_depth']:.2f}), "
        f"{best['metric']} = {best['best_score']:.3f}; final layer {best['final_layer']} = "
        f"{best['final_score']:.3f}; gain {best['gain']:+.3f} ({best['gain_pct']:+.1f}%)"
    )
    low, high = best.get("gain_ci_low"), best.get("gain_ci_high")
    if best["best_layer"] == best["final_layer"]:
        return line + "; the final layer is the best"
    if low is not None and _finite(low) and _finite(high):
        verdict = "significant" if best.get("significant") else "not significant"
        line += f", 95% CI [{low:+.3f}, {high:+.3f}], {verdict}"
    return line


def _summary_html(summary: pd.DataFrame, tasks: list[str]) -> str:
    if summary.empty:
        return "<p>No model layers were scored.</p>"
    items = []
    for row in summary.to_dict("records"):
        text = html.escape(summary_line(row))
        if row.get("significant") and row["best_layer"] != row["final_layer"]:
            text = f'<span class="sig">{text}</span>'
        items.append(f"<li>{text}</li>")
    explain = []
    for task in tasks:
        unit = _RESAMPLED.get(task, "items")
        metric = MAIN_METRIC.get(task, "?")
        explain.append(
            f"{task}: layers are ranked by <code>{metric}</code>; the gain over the final layer "
            f"has a paired bootstrap interval (the same resampled {unit} for both layers in "
            "every draw) and is called <b>significant</b> when that 95% interval excludes 0."
        )
    caveat = (
        "The best layer is chosen on the same data the gain is measured on, so the interval "
        "does not cover that choice; treat a gain whose interval barely excludes 0 as a lead."
    )
    return (
        "<ul>"
        + "".join(items)
        + "</ul>"
        + "".join(f'<p class="muted">{e}</p>' for e in explain)
        + f'<p class="muted">{caveat}</p>'
    )


def _baselines_html(df: pd.DataFrame) -> str:
    rows = df[df["model"].astype(str).str.startswith("baseline:")]
    rows = rows[~rows["metric"].isin(["effective_rank", "matrix_entropy"])]
    if rows.empty:
        return "<p>No baselines were scored.</p>"
    shown = rows.assign(score=[_with_ci(r) for r in rows.to_dict("records")])
    wide = shown.pivot_table(
        index=["model", "context"], columns="metric", values="score", aggfunc="first"
    ).reset_index()
    wide.columns.name = None
    note = (
        '<p class="muted">Parameter-free representations scored like a layer: PCA of '
        "log-normalised HVGs, and log-normalised expression. In the trajectory task the "
        "reference is computed on the PCA baseline itself, so its dpt_spearman and "
        "neighbourhood_overlap are 1 by construction (a ceiling).</p>"
    )
    return wide.to_html(index=False, border=0, escape=True) + note


def _proxies_html(summary: pd.DataFrame) -> str:
    note = (
        '<p class="muted">effective_rank = exp(entropy of the normalised singular values); '
        "matrix_entropy = von Neumann entropy of the trace-normalised covariance. Both are in "
        "the score table per layer; here, Spearman's rho across layers between each proxy and "
        "the task score (NaN with fewer than 3 layers).</p>"
    )
    if summary.empty:
        return note
    cols = ["model", "task", "context", "metric", "effective_rank_rho", "matrix_entropy_rho"]
    return summary[cols].to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0) + note


def _table_html(df: pd.DataFrame) -> str:
    # Wide view (one row per model, context and layer, one column per metric) reads better.
    shown = df.assign(score=[_with_ci(r) for r in df.to_dict("records")])
    shown["layer"] = shown["layer"].astype(object).where(shown["layer"].notna(), "")
    shown["depth"] = [f"{d:.2f}" if _finite(d) else "" for d in shown["depth"]]
    wide = shown.pivot_table(
        index=["model", "context", "layer", "depth"],
        columns="metric",
        values="score",
        aggfunc="first",
        sort=False,
    ).reset_index()
    wide.columns.name = None
    return wide.to_html(index=False, border=0)


def _with_ci(row: Mapping[str, Any]) -> str:
    value = row["value"]
    if not _finite(value):
        return "nan"
    text = f"{value:.3f}"
    if _finite(row.get("ci_low")) and _finite(row.get("ci_high")):
        text += f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    if _finite(row.get("null_z")):
        text += f" z={row['null_z']:.1f}"
    return text


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
