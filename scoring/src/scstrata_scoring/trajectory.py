"""Trajectory score: does a layer's embedding order cells along the same pseudotime?

Following the layer study this package reproduces: the reference is diffusion pseudotime
(DPT; Haghverdi et al. 2016, *Nat. Methods* 13:845) on the PCA of log-normalised highly
variable genes, rooted at the first cell of the earliest time point. Each layer gets DPT on a
kNN graph of its own embedding, from the same root, and is scored by Spearman's rank
correlation with the reference (and with the observed time points, where the data have them).

Cells that DPT cannot reach from the root (another connected component of the kNN graph) get
an infinite pseudotime from scanpy. Here they are **ranked last**: all of them tie at a rank
above every reachable cell. This keeps every cell in every correlation, so layers are compared
on the same cells, and a layer whose graph falls apart is penalised rather than scored on the
easy remainder. The fraction of such cells is reported as ``dpt_unreachable_fraction`` so the
penalty stays visible.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import stats

__all__ = [
    "embedding_pseudotime",
    "rank_unreachable_last",
    "reference_pseudotime",
    "root_cell",
    "time_values",
    "trajectory_scores",
]

# scanpy's defaults; named here because both the reference and every layer must use the same.
_N_DIFFMAP_COMPS = 15
_N_DCS = 10
_RANDOM_STATE = 0


def time_values(time_labels: Sequence | pd.Series | np.ndarray) -> np.ndarray:
    """Observed time labels as floats that sort in time order (NaN where missing).

    Numbers are taken as they are; an *ordered* categorical counts by its category order;
    strings that parse as numbers are parsed. Anything else is ambiguous and raises.
    """
    labels = pd.Series(time_labels) if not isinstance(time_labels, pd.Series) else time_labels
    if isinstance(labels.dtype, pd.CategoricalDtype):
        if labels.cat.ordered:
            codes = labels.cat.codes.to_numpy().astype(float)
            codes[codes < 0] = np.nan
            return codes
        labels = labels.astype(object)
    try:
        return pd.to_numeric(labels, errors="raise").to_numpy(dtype=float)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "time labels must be numbers or an ordered categorical so that the earliest time "
            f"point is defined; got values like {labels.iloc[:3].tolist()!r}"
        ) from err


def root_cell(time_labels: Sequence | pd.Series | np.ndarray) -> int:
    """Index (position in obs order) of the first cell at the earliest time point."""
    values = time_values(time_labels)
    if values.size == 0 or np.all(np.isnan(values)):
        raise ValueError("time labels: need at least one cell with a time label")
    earliest = np.nanmin(values)
    return int(np.flatnonzero(values == earliest)[0])


def reference_pseudotime(
    adata: ad.AnnData,
    time_key: str,
    n_top_genes: int = 2500,
    n_pcs: int = 50,
    n_neighbors: int = 30,
) -> tuple[np.ndarray, int]:
    """Diffusion pseudotime of the expression data, the reference for every layer.

    Steps, on a copy of ``adata`` (``adata.X`` must hold raw counts):
    ``normalize_total`` to 10,000 counts per cell, ``log1p``, the ``n_top_genes`` most variable
    genes (scanpy flavour ``"seurat"``, among genes detected in at least one cell), PCA with
    ``n_pcs`` components (unscaled, as in the study), a kNN graph with ``n_neighbors``
    neighbours on the PCA, a diffusion map, and DPT from :func:`root_cell` of
    ``adata.obs[time_key]``. ``n_top_genes``, ``n_pcs`` and ``n_neighbors`` are clipped to
    what the data allow.

    Returns
    -------
    The pseudotime per cell (in obs order; ``inf`` for cells unreachable from the root) and the
    root's index.
    """
    root = root_cell(adata.obs[time_key])
    norm = ad.AnnData(X=adata.X.copy(), obs=pd.DataFrame(index=adata.obs_names.copy()))
    norm.var_names = adata.var_names.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    # A gene never detected has no dispersion to rank, so it cannot be "highly variable".
    detected = np.asarray((norm.X != 0).sum(axis=0)).ravel() > 0
    if not detected.any():
        raise ValueError("adata.X has no non-zero value; cannot compute a reference")
    norm = norm[:, detected].copy()
    n_hvg = min(n_top_genes, norm.n_vars)
    if n_hvg < norm.n_vars:
        sc.pp.highly_variable_genes(norm, flavor="seurat", n_top_genes=n_hvg)
        norm = norm[:, norm.var["highly_variable"].to_numpy()].copy()
    n_comps = min(n_pcs, min(norm.n_obs, norm.n_vars) - 1)
    if n_comps < 1:
        raise ValueError(f"need at least 2 cells and 2 genes for a PCA, got {norm.shape}")
    # arpack is deterministic for a fixed start vector, which scanpy draws from random_state;
    # on sparse input it centres implicitly, so the matrix is never densified.
    pca = sc.pp.pca(norm.X, n_comps=n_comps, random_state=_RANDOM_STATE, svd_solver="arpack")
    return _dpt(np.asarray(pca, dtype=np.float64), root, n_neighbors), root


def embedding_pseudotime(embedding: np.ndarray, root: int, n_neighbors: int = 30) -> np.ndarray:
    """DPT on a kNN graph of ``embedding`` itself (Euclidean, no reduction), from ``root``.

    Returns the pseudotime per row, ``inf`` for rows unreachable from the root.
    """
    emb = np.asarray(embedding, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embedding must be 2-D (cells x dims), got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embedding contains NaN or inf")
    if not 0 <= root < emb.shape[0]:
        raise ValueError(f"root {root} is out of range for {emb.shape[0]} cells")
    return _dpt(emb, root, n_neighbors)


def rank_unreachable_last(pseudotime: np.ndarray) -> np.ndarray:
    """Replace non-finite pseudotimes by one value above every finite one, so they tie last."""
    pt = np.asarray(pseudotime, dtype=np.float64).copy()
    bad = ~np.isfinite(pt)
    if bad.any():
        pt[bad] = (pt[~bad].max() + 1.0) if (~bad).any() else 0.0
    return pt


def trajectory_scores(
    embedding: np.ndarray,
    reference_pt: np.ndarray,
    root: int,
    time: Sequence | np.ndarray | pd.Series | None = None,
    n_neighbors: int = 30,
) -> dict[str, float]:
    """Score how well ``embedding`` recovers the reference trajectory.

    * ``dpt_spearman``: Spearman's :math:`\\rho` between the embedding's DPT (from ``root``)
      and ``reference_pt``.
    * ``time_spearman`` (only when ``time`` is given): Spearman's :math:`\\rho` between the
      embedding's DPT and the observed time labels, over cells with a label.
    * ``dpt_unreachable_fraction``: share of cells the embedding's kNN graph does not connect
      to the root.

    Unreachable cells (in either pseudotime) are ranked last, see the module docstring.
    :math:`\\rho` is the Pearson correlation of the ranks, ties getting their mean rank
    (Spearman 1904, *Am. J. Psychol.* 15:72).
    """
    reference_pt = np.asarray(reference_pt, dtype=np.float64)
    layer_pt = embedding_pseudotime(embedding, root, n_neighbors=n_neighbors)
    if layer_pt.shape != reference_pt.shape:
        raise ValueError(
            f"reference pseudotime has {reference_pt.size} cells, embedding has {layer_pt.size}"
        )
    ranked = rank_unreachable_last(layer_pt)
    scores = {
        "dpt_spearman": _spearman(ranked, rank_unreachable_last(reference_pt)),
        "dpt_unreachable_fraction": float(np.mean(~np.isfinite(layer_pt))),
    }
    if time is not None:
        t = time_values(time)
        labelled = ~np.isnan(t)
        scores["time_spearman"] = _spearman(ranked[labelled], t[labelled])
    return scores


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho, NaN when either side is constant (no ranking to compare)."""
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def _dpt(rep: np.ndarray, root: int, n_neighbors: int) -> np.ndarray:
    """DPT from ``root`` on a kNN graph of ``rep``, on a scratch AnnData."""
    n_cells = rep.shape[0]
    if n_cells < 3:
        raise ValueError(f"DPT needs at least 3 cells, got {n_cells}")
    scratch = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(n_cells).astype(str)))
    scratch.obsm["X_rep"] = rep
    with warnings.catch_warnings():
        # scanpy warns about the empty X of the scratch object; it is never used.
        warnings.simplefilter("ignore", UserWarning)
        sc.pp.neighbors(
            scratch,
            n_neighbors=min(n_neighbors, n_cells - 1),
            use_rep="X_rep",
            random_state=_RANDOM_STATE,
        )
        n_comps = min(_N_DIFFMAP_COMPS, n_cells - 2)
        sc.tl.diffmap(scratch, n_comps=n_comps, random_state=_RANDOM_STATE)
        scratch.uns["iroot"] = int(root)
        sc.tl.dpt(scratch, n_dcs=min(_N_DCS, n_comps))
    return scratch.obs["dpt_pseudotime"].to_numpy(dtype=np.float64)
