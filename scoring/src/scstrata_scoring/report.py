"""A self-contained HTML report of a layer sweep, written to be read by someone new to it.

It opens with the run's notes (such as "random weights"), then one headline per model and
context: the best layer, how it compares with the baselines (said plainly when every layer is
below one), and its gain over the final layer in the score's own units with its interval (a
percentage only over a final score that is positive and not near 0). Then the plot, one
sentence per metric on what it measures and its range, the baselines, the proxies, every
score, and the provenance: which data, cells, genes, model card, pooling, layers, recipe,
versions and seeds.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .glossary import METRIC_INFO, METRIC_LABELS
from .plot import plot_scores
from .subsample import subsample_note
from .summary import MAIN_METRIC, PERCENT_MIN_FINAL, summarise

__all__ = ["headline", "summary_line", "write_report"]

# What each recipe changes in a metric's meaning, said under the metric's sentence.
_RECIPE_INFO = {
    ("study", "dpt_spearman"): "Study recipe: cells unreachable in either pseudotime are "
    "left out of the correlation.",
    ("study", "time_spearman"): "Study recipe: cells the layer's graph does not reach are "
    "left out.",
    ("study", "neighbourhood_overlap"): "Study recipe, reproduced as published: scanpy's 29 "
    "stored neighbours of each cell, padded with cell 0 to 30 slots, divided by 30; cell 0 "
    "then counts as shared by every cell, which adds up to 1/30 (0.033) to every score.",
    ("scstrata", "dpt_spearman"): "Cells unreachable in a pseudotime are ranked tied last.",
}

_CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 72em; line-height: 1.4; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f3f3f3; }
.headline li { margin-bottom: 0.6em; }
.below { color: #8a0000; }
.notes { background: #fff4e0; border-left: 4px solid #d08000; padding: 0.5em 2em; }
.notes li { color: #8a4b00; }
.muted { color: #666; font-size: 0.9em; }
dl.metrics dt { font-weight: bold; margin-top: 0.4em; }
table.provenance td, table.provenance th { text-align: left; }
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
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/report.html``: notes, headlines, plot, metrics, tables, provenance.

    ``df`` is a sweep's score table and ``summary`` its summary
    (:class:`~scstrata_scoring.sweep.SweepResult`); without ``summary`` one is computed from
    ``df`` and gains carry no interval. The plot ``out_dir/plot_name`` (default
    ``<task>.png``) is drawn first if it does not exist yet, and embedded as a data URI so the
    HTML file stands alone. ``notes`` are shown line by line, verbatim (only HTML-escaped).
    ``provenance`` (name -> value) is shown as a table at the end.

    Returns the path of the report.
    """
    sampled = subsample_note(df)  # scored on a subsample: say how many cells, which seed
    notes = [*(notes or []), *([sampled] if sampled else [])]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [str(t) for t in dict.fromkeys(df["task"])] if "task" in df else ["trajectory"]
    recipes = [str(r) for r in dict.fromkeys(df["recipe"])] if "recipe" in df else ["scstrata"]
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
        # First: a note such as "random weights" changes how everything below reads.
        parts.append('<ul class="notes">')
        parts.extend(f"<li>{html.escape(line)}</li>" for line in notes)
        parts.append("</ul>")
    parts += ["<h2>What this run says</h2>", _headlines_html(summary, tasks)]
    parts.append(f'<img alt="score against depth" src="data:image/png;base64,{image}">')
    parts.append("<h2>What the scores measure</h2>")
    parts.append(_metrics_html(df, recipes))
    parts.append("<h2>Baselines</h2>")
    parts.append(_baselines_html(df, tasks, recipes))
    parts.append("<h2>Label-free proxies</h2>")
    parts.append(_proxies_html(summary))
    parts.append("<h2>All scores</h2>")
    parts.append(_table_html(df))
    if provenance:
        parts.append("<h2>Provenance</h2>")
        parts.append(_provenance_html(provenance))
    parts.append("</body></html>")
    path = out_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def headline(best: Mapping[str, Any]) -> str:
    """One summary row in words: the best layer, the baselines, the gain over the final layer.

    Every score carries its 95% interval when the row has one; the gain over the final layer
    is in the score's units, with a percentage only when the final score is at least
    :data:`~scstrata_scoring.summary.PERCENT_MIN_FINAL`.
    """
    context = best.get("context")
    who = f"{best['model']}" + (f" [{context}]" if context not in (None, "all") else "")
    metric = str(best["metric"])
    label = METRIC_LABELS.get(metric, metric)
    text = (
        f"{who}: best layer {best['best_layer']} (depth {best['best_depth']:.2f}), "
        f"{label} ({metric}) = {best['best_score']:.3f}"
        f"{_interval(best.get('best_ci_low'), best.get('best_ci_high'), signed=False)}."
    )
    text += _baseline_sentence(best)
    text += _final_sentence(best)
    return text


#: The CLI's one line per summary row (the same words as the report's headline).
summary_line = headline


def _baseline_sentence(best: Mapping[str, Any]) -> str:
    below = [b for b in str(best.get("below_baselines") or "").split(";") if b]
    name = best.get("baseline")
    if not name or not isinstance(name, str):
        return ""
    low, high = best.get("vs_baseline_ci_low"), best.get("vs_baseline_ci_high")
    versus = (
        f" Best layer minus {name} ({best['baseline_score']:.3f}): {best['vs_baseline']:+.3f}"
        f"{_interval(low, high)}"
    )
    if _finite(low) and _finite(high) and low <= 0.0 <= high:
        versus += " (the interval includes 0: no clear difference)"
    versus += "."
    if not below:
        return " It is above every baseline." + versus
    text = f" Every layer scores below {' and '.join(below)}."
    if best.get("task") == "trajectory" and "baseline:pca" in below:
        text += " (baseline:pca is the reference's own representation: a ceiling.)"
    return text + versus


def _final_sentence(best: Mapping[str, Any]) -> str:
    if best["best_layer"] == best["final_layer"]:
        return " The final layer is the best."
    text = (
        f" Over the final layer {best['final_layer']} ({best['final_score']:.3f}): "
        f"{best['gain']:+.3f}"
    )
    low, high = best.get("gain_ci_low"), best.get("gain_ci_high")
    if _finite(low) and _finite(high):
        verdict = "significant" if best.get("significant") else "not significant"
        text += f", 95% CI [{low:+.3f}, {high:+.3f}], {verdict}"
    if _finite(best.get("gain_pct")):
        text += f" ({best['gain_pct']:+.1f}% of the final score)"
    elif _finite(best.get("final_score")):
        text += f" (no percentage: the final score is below {PERCENT_MIN_FINAL:g})"
    return text + "."


def _interval(low: Any, high: Any, signed: bool = True) -> str:
    if not (_finite(low) and _finite(high)):
        return ""
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f", 95% CI [{fmt.format(low)}, {fmt.format(high)}]"


def _headlines_html(summary: pd.DataFrame, tasks: list[str]) -> str:
    if summary.empty:
        return "<p>No model layers were scored.</p>"
    items = []
    for row in summary.to_dict("records"):
        css = ' class="below"' if row.get("below_baselines") else ""
        items.append(f"<li{css}>{html.escape(headline(row))}</li>")
    explain = []
    for task in tasks:
        unit = _RESAMPLED.get(task, "items")
        metric = MAIN_METRIC.get(task, "?")
        explain.append(
            f"Layers are ranked by <code>{metric}</code>. Intervals are 95% bootstrap intervals "
            f"over resampled {unit}; gains are paired (the same resampled {unit} for both sides "
            "in every draw) and called <b>significant</b> when their interval excludes 0."
        )
    caveat = (
        "The best layer is chosen on the same data the gain is measured on, so the interval "
        "does not cover that choice; treat a gain whose interval barely excludes 0 as a lead."
    )
    return (
        '<ul class="headline">'
        + "".join(items)
        + "</ul>"
        + "".join(f'<p class="muted">{e}</p>' for e in explain)
        + f'<p class="muted">{caveat}</p>'
    )


def _metrics_html(df: pd.DataFrame, recipes: list[str]) -> str:
    present = [m for m in METRIC_INFO if m in set(df["metric"])]
    items = []
    for metric in present:
        text = f"{METRIC_INFO[metric]}"
        for recipe in recipes:
            extra = _RECIPE_INFO.get((recipe, metric))
            if extra:
                text += f" {extra}"
        label = METRIC_LABELS.get(metric, metric)
        items.append(
            f"<dt>{html.escape(label)} (<code>{metric}</code>)</dt><dd>{html.escape(text)}</dd>"
        )
    return '<dl class="metrics">' + "".join(items) + "</dl>"


def _baselines_html(df: pd.DataFrame, tasks: list[str], recipes: list[str]) -> str:
    rows = df[df["model"].astype(str).str.startswith("baseline:")]
    rows = rows[~rows["metric"].isin(["effective_rank", "matrix_entropy"])]
    if rows.empty:
        return "<p>No baselines were scored.</p>"
    shown = rows.assign(score=[_with_ci(r) for r in rows.to_dict("records")])
    wide = shown.pivot_table(
        index=["model", "context"], columns="metric", values="score", aggfunc="first"
    ).reset_index()
    wide.columns.name = None
    notes = [
        "Parameter-free representations scored like a layer: baseline:pca is the PCA of "
        "log-normalised highly variable genes, baseline:expression the log-normalised "
        "expression itself."
    ]
    if "trajectory" in tasks:
        padded = " (the study recipe's padded overlap just under 1)" if "study" in recipes else ""
        notes.append(
            "The reference pseudotime and neighbours are computed on baseline:pca itself, so "
            f"its pseudotime agreement and neighbourhood overlap are 1 by construction{padded}: "
            "a ceiling, not a competitor."
        )
    if "perturbation" in tasks:
        notes.append(
            "The reference similarity comes from the same cells' expression, so the baselines "
            "share its sampling noise; on small screens that favours them."
        )
    text = "".join(f'<p class="muted">{html.escape(n)}</p>' for n in notes)
    return wide.to_html(index=False, border=0, escape=True) + text


def _proxies_html(summary: pd.DataFrame) -> str:
    note = (
        '<p class="muted">Spearman\'s rho across layers between each label-free proxy and the '
        "task score: does the proxy rank layers like the task does (NaN with fewer than 3 "
        "layers)?</p>"
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


def _provenance_html(provenance: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_plain(v))}</td></tr>"
        for k, v in provenance.items()
    )
    return f'<table class="provenance">{rows}</table>'


def _plain(value: Any) -> str:
    if isinstance(value, Mapping):
        return "; ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    return str(value)


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
