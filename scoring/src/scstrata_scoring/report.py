"""A small self-contained HTML report of a layer sweep."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from .plot import plot_scores
from .sweep import best_layer

__all__ = ["write_report"]

_CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 60em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f3f3f3; }
.notes li { color: #8a4b00; }
"""


def write_report(
    df: pd.DataFrame,
    out_dir: str | Path,
    notes: list[str] | None = None,
    *,
    metric: str = "dpt_spearman",
    plot_name: str = "trajectory.png",
) -> Path:
    """Write ``out_dir/report.html``: notes, best-layer summary, the plot and the score table.

    The plot ``out_dir/plot_name`` is drawn first if it does not exist yet, and embedded as a
    data URI so the HTML file stands alone. ``notes`` are shown line by line, verbatim (only
    HTML-escaped). The summary gives, per model, the best layer by ``metric`` and its gain
    over the final layer (:func:`~scstrata_scoring.sweep.best_layer`).

    Returns the path of the report.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / plot_name
    if not png.exists():
        plot_scores(df, png)
    image = base64.b64encode(png.read_bytes()).decode("ascii")

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>scstrata layer scores</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Layer scores</h1>",
    ]
    if notes:
        parts.append('<h2>Notes</h2><ul class="notes">')
        parts.extend(f"<li>{html.escape(line)}</li>" for line in notes)
        parts.append("</ul>")
    parts.append(f"<h2>Best layer by {html.escape(metric)}</h2>")
    parts.append(_summary_html(df, metric))
    parts.append(f'<img alt="score against depth" src="data:image/png;base64,{image}">')
    parts.append("<h2>Scores</h2>")
    parts.append(_table_html(df))
    parts.append("</body></html>")
    path = out_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _summary_html(df: pd.DataFrame, metric: str) -> str:
    lines = []
    for model in sorted(df["model"].unique()):
        try:
            best = best_layer(df, metric=metric, model=model)
        except ValueError as err:
            lines.append(f"<li>{html.escape(str(model))}: {html.escape(str(err))}</li>")
            continue
        lines.append("<li>" + html.escape(summary_line(best)) + "</li>")
    return "<ul>" + "".join(lines) + "</ul>"


def summary_line(best: dict) -> str:
    """One sentence naming the best layer, its depth and its gain over the final layer."""
    return (
        f"{best['model']}: best layer {best['best_layer']} (depth {best['best_depth']:.2f}), "
        f"{best['metric']} = {best['best_score']:.3f}; final layer {best['final_layer']} = "
        f"{best['final_score']:.3f}; gain {best['gain']:+.3f} ({best['gain_pct']:+.1f}%)"
    )


def _table_html(df: pd.DataFrame) -> str:
    # Wide view (one row per model and layer, one column per metric) reads better than tidy.
    wide = df.pivot_table(
        index=["model", "layer", "depth"], columns="metric", values="value", aggfunc="first"
    ).reset_index()
    wide.columns.name = None
    return wide.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)
