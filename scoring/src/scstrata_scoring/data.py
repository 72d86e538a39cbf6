"""Readers for real data laid out like the study's: an ``.h5ad`` with raw counts and obs labels.

Trajectory data need a time column (numbers, or an ordered categorical such as
``day0 < day2 < day7``); perturbation data need a perturbation column naming each cell's
target (or the non-targeting control label) and, usually, an activation-state column. Column
names and the control label are arguments, since every data set spells them differently.
Counts may sit in ``X`` or in a layer (``counts_layer``); the readers return an AnnData with
raw counts in ``X`` and the label columns checked.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
from scipy import sparse

from .trajectory import time_values

__all__ = ["check_counts", "read_perturbation", "read_trajectory"]

logger = logging.getLogger(__name__)


def read_trajectory(
    path: str | Path, time_key: str = "time", counts_layer: str | None = None
) -> ad.AnnData:
    """Read trajectory data; drop cells without a time label.

    ``obs[time_key]`` must be numeric, numeric text, or an ordered categorical (see
    :func:`~scstrata_scoring.trajectory.time_values`), with at least two time points.
    """
    adata = _read(path, counts_layer)
    if time_key not in adata.obs:
        raise ValueError(f"{path}: no obs column {time_key!r} (time); has {list(adata.obs)}")
    time = time_values(adata.obs[time_key])
    missing = np.isnan(time)
    if missing.any():
        logger.warning("%s: dropping %d cells without a time label", path, int(missing.sum()))
        adata = adata[~missing].copy()
        time = time[~missing]
    if np.unique(time).size < 2:
        raise ValueError(f"{path}: obs[{time_key!r}] needs at least 2 time points")
    return adata


def read_perturbation(
    path: str | Path,
    perturbation_key: str = "perturbation",
    state_key: str | None = "state",
    control: str = "non-targeting",
    counts_layer: str | None = None,
) -> ad.AnnData:
    """Read perturbation data; check the perturbation, state and control labels.

    Cells without a perturbation label are dropped. Every state (or the whole data set when
    ``state_key`` is None) needs at least 2 control cells; the others are warned about and
    scored as absent by the sweep.
    """
    adata = _read(path, counts_layer)
    for key in (perturbation_key, state_key):
        if key is not None and key not in adata.obs:
            raise ValueError(f"{path}: no obs column {key!r}; has {list(adata.obs)}")
    labels = adata.obs[perturbation_key]
    missing = labels.isna().to_numpy()
    if missing.any():
        logger.warning("%s: dropping %d cells without a perturbation", path, int(missing.sum()))
        adata = adata[~missing].copy()
    labels = adata.obs[perturbation_key].astype(str)
    if not (labels == control).any():
        found = ", ".join(labels.value_counts().index[:5])
        raise ValueError(f"{path}: no control cells labelled {control!r} (most common: {found})")
    if state_key is not None:
        per_state = (labels == control).groupby(adata.obs[state_key], observed=True).sum()
        short = per_state[per_state < 2]
        if len(short):
            logger.warning("%s: fewer than 2 control cells in states %s", path, list(short.index))
    return adata


def check_counts(x) -> None:
    """Raise if ``x`` has negative values; warn if they are not whole numbers (not raw counts)."""
    values = x.data if sparse.issparse(x) else np.asarray(x)
    if values.size and values.min() < 0:
        raise ValueError("counts must be non-negative; pass raw counts (or counts_layer=)")
    sample = values.ravel()[:100_000]
    if sample.size and not np.allclose(sample, np.round(sample)):
        logger.warning(
            "X does not look like raw counts (non-integer values); references "
            "log-normalise it again"
        )


def _read(path: str | Path, counts_layer: str | None) -> ad.AnnData:
    adata = ad.read_h5ad(path)
    if counts_layer is not None:
        if counts_layer not in adata.layers:
            raise ValueError(f"{path}: no layer {counts_layer!r}; has {list(adata.layers)}")
        adata.X = adata.layers[counts_layer]
    check_counts(adata.X)
    return adata
