"""Summaries of a score table: the best layer per model, task and context, and its gain.

The best layer has the highest main score (:data:`MAIN_METRIC`); its gain over the final
layer gets a paired bootstrap interval when the sweep's draws are at hand, and is called
significant when that interval excludes 0. The best layer is also compared with the strongest
baseline of its context (paired the same way), and every baseline that beats it, and so
beats every layer, is named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .baselines import BASELINE_PCA
from .proxies import PROXY_METRICS
from .resample import paired_difference, rowwise_spearman

__all__ = ["MAIN_METRIC", "PERCENT_MIN_FINAL", "SUMMARY_COLUMNS", "best_layer", "summarise"]

#: Columns of the summary table (one row per model, task and context), in order.
SUMMARY_COLUMNS = [
    "model",
    "task",
    "context",
    "metric",
    "best_layer",
    "best_depth",
    "best_score",
    "best_ci_low",
    "best_ci_high",
    "final_layer",
    "final_score",
    "gain",
    "gain_pct",
    "gain_ci_low",
    "gain_ci_high",
    "significant",
    "baseline",
    "baseline_score",
    "vs_baseline",
    "vs_baseline_ci_low",
    "vs_baseline_ci_high",
    "below_baselines",
    "effective_rank_rho",
    "matrix_entropy_rho",
]

#: A gain is also given in percent of the final score only when that score is at least this:
#: a percent of a score near or below 0 (on scales from -1 to 1) is large and means nothing.
PERCENT_MIN_FINAL = 0.1

#: The score a task's best layer is chosen by.
MAIN_METRIC = {"trajectory": "dpt_spearman", "perturbation": "rsa_spearman"}


def summarise(
    scores: pd.DataFrame, draws: Mapping[tuple, np.ndarray] | None = None
) -> pd.DataFrame:
    """Best layer per model, task and context, its gain over the final layer, proxy ranks.

    The best layer has the highest main score (:data:`MAIN_METRIC`; ties go to the shallower
    layer); the final layer is the one at depth 1 (the deepest present if none is). ``gain``
    is best minus final; with ``draws`` (bootstrap draws per ``(model, layer, context,
    metric)``, paired across layers) it gets a percentile interval and is ``significant``
    when the interval excludes 0. ``baseline`` is the baseline with the highest main score in
    the same task and context (in the trajectory task not ``baseline:pca``, the reference's
    own representation, unless it is the only one), ``vs_baseline`` the best layer minus it
    (paired interval with ``draws``), and ``below_baselines`` the baselines scoring above the
    best layer, joined by ``;`` (empty when none). ``*_rho``: Spearman's rho across layers
    between a proxy and the main score (NaN with fewer than 3 layers). Baselines are not
    summarised themselves.
    """
    rows = []
    is_baseline = scores["model"].astype(str).str.startswith("baseline:")
    models = scores[~is_baseline]
    for (model, task, context), group in models.groupby(["model", "task", "context"], sort=False):
        metric = MAIN_METRIC[task]
        try:
            best = best_layer(group, metric=metric)
        except ValueError:
            continue
        best_row = group[(group["metric"] == metric) & (group["layer"] == best["best_layer"])]
        gain_ci = (np.nan, np.nan, False)
        if draws is not None:
            key_best = (model, best["best_layer"], context, metric)
            key_final = (model, best["final_layer"], context, metric)
            if key_best in draws and key_final in draws:
                _, low, high, significant = paired_difference(
                    best["best_score"], draws[key_best], best["final_score"], draws[key_final]
                )
                gain_ci = (low, high, significant)
        versus = _versus_baselines(
            scores[is_baseline], task, context, metric, best, draws or {}, model
        )
        rhos = [_proxy_rho(group, proxy, metric) for proxy in PROXY_METRICS]
        rows.append(
            (
                model,
                task,
                context,
                metric,
                best["best_layer"],
                best["best_depth"],
                best["best_score"],
                float(best_row["ci_low"].iloc[0]),
                float(best_row["ci_high"].iloc[0]),
                best["final_layer"],
                best["final_score"],
                best["gain"],
                best["gain_pct"],
                *gain_ci,
                *versus,
                *rhos,
            )
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def best_layer(
    df: pd.DataFrame,
    metric: str | None = None,
    model: str | None = None,
    context: str | None = None,
) -> dict[str, Any]:
    """The layer with the highest ``metric`` and its gain over the final layer (no interval).

    ``metric`` defaults to the main score of the table's task. The final layer is the one at
    depth 1 (``layer == n_layers``); when the table has none, the deepest layer present stands
    in for it. Gains are ``best - final`` (``gain``) and ``100 * (best - final) / final``
    (``gain_pct``, NaN unless the final score is at least :data:`PERCENT_MIN_FINAL`).
    ``model`` and ``context`` pick one from a table holding several; ties go to the shallower
    layer. Baseline rows are ignored.

    Returns
    -------
    ``{"model", "context", "metric", "best_layer", "best_depth", "best_score", "final_layer",
    "final_score", "gain", "gain_pct"}``.
    """
    if metric is None:
        tasks = df["task"].unique() if "task" in df else ["trajectory"]
        metric = MAIN_METRIC.get(str(tasks[0]), "dpt_spearman") if len(tasks) else "dpt_spearman"
    rows = df[(df["metric"] == metric) & df["layer"].notna()]
    rows = rows[~rows["model"].astype(str).str.startswith("baseline:")]
    model = _pick(rows, "model", model)
    rows = rows[rows["model"] == model]
    if "context" in rows:
        context = _pick(rows, "context", context)
        rows = rows[rows["context"] == context]
    rows = rows[rows["value"].notna()]
    if rows.empty:
        raise ValueError(f"no {metric!r} scores for model {model!r}")
    rows = rows.sort_values("layer", kind="stable")
    # argmax returns the first maximum, so after sorting by layer ties go to the shallower one.
    best = rows.iloc[int(np.argmax(rows["value"].to_numpy(dtype=float)))]
    at_depth_one = rows[np.isclose(rows["depth"].to_numpy(dtype=float), 1.0)]
    final = at_depth_one.iloc[-1] if len(at_depth_one) else rows.iloc[-1]
    gain = float(best["value"] - final["value"])
    return {
        "model": model,
        "context": context,
        "metric": metric,
        "best_layer": int(best["layer"]),
        "best_depth": float(best["depth"]),
        "best_score": float(best["value"]),
        "final_layer": int(final["layer"]),
        "final_score": float(final["value"]),
        "gain": gain,
        "gain_pct": _percent(gain, float(final["value"])),
    }


def _percent(gain: float, final: float) -> float:
    """``100 * gain / final``, or NaN when ``final`` is below :data:`PERCENT_MIN_FINAL`."""
    return 100.0 * gain / final if final >= PERCENT_MIN_FINAL else float("nan")


def _versus_baselines(
    baselines: pd.DataFrame,
    task: str,
    context: str,
    metric: str,
    best: Mapping[str, Any],
    draws: Mapping[tuple, np.ndarray],
    model: str,
) -> tuple[str, float, float, float, float, str]:
    """``(baseline, its score, best - it, CI low, CI high, baselines above the best layer)``."""
    rows = baselines[
        (baselines["task"] == task)
        & (baselines["context"] == context)
        & (baselines["metric"] == metric)
        & baselines["value"].notna()
    ]
    if rows.empty:
        return ("", np.nan, np.nan, np.nan, np.nan, "")
    # In the trajectory task the reference is computed on the PCA baseline, whose scores are
    # then 1 by construction; the baseline to measure a layer against is the strongest other.
    rivals = rows
    if task == "trajectory" and (rows["model"] != BASELINE_PCA).any():
        rivals = rows[rows["model"] != BASELINE_PCA]
    top = rivals.iloc[int(np.argmax(rivals["value"].to_numpy(dtype=float)))]
    name, score = str(top["model"]), float(top["value"])
    low = high = np.nan
    key_best = (model, best["best_layer"], context, metric)
    key_base = (name, None, context, metric)
    if key_best in draws and key_base in draws:
        _, low, high, _ = paired_difference(
            best["best_score"], draws[key_best], score, draws[key_base]
        )
    above = rows[rows["value"].to_numpy(dtype=float) > best["best_score"]]
    return (name, score, best["best_score"] - score, low, high, ";".join(above["model"]))


def _pick(rows: pd.DataFrame, column: str, value: str | None) -> str | None:
    values = rows[column].unique()
    if value is None:
        if len(values) > 1:
            raise ValueError(f"table holds {column}s {list(values)}; pass {column}=")
        return str(values[0]) if len(values) else None
    return value


def _proxy_rho(group: pd.DataFrame, proxy: str, metric: str) -> float:
    wide = group[group["metric"].isin([proxy, metric])].pivot_table(
        index="layer", columns="metric", values="value", aggfunc="first"
    )
    if proxy not in wide or metric not in wide:
        return float("nan")
    wide = wide.dropna()
    if len(wide) < 3:
        return float("nan")
    a, b = wide[proxy].to_numpy(dtype=float), wide[metric].to_numpy(dtype=float)
    return float(rowwise_spearman(a[None, :], b[None, :])[0])
