"""Parameter-free representations of the expression data: the references' inputs and baselines.

Both tasks compare a layer with what the expression data give without any model:

* ``baseline:pca``: PCA of the log-normalised highly variable genes (2,500 HVGs, 50 PCs,
  as in the study). The trajectory reference is computed on this very representation.
* ``baseline:expression``: the log-normalised expression of every detected gene, kept sparse
  (CSR float32): every score of it goes through a neighbour search or per-group means, both
  of which take sparse input, so it is never densified.

Log-normalisation is scanpy's ``normalize_total`` to 10,000 counts per cell then ``log1p``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

__all__ = [
    "BASELINE_EXPRESSION",
    "BASELINE_PCA",
    "baseline_embeddings",
    "expression_matrix",
    "hvg_pca",
    "log_normalise",
]

BASELINE_PCA = "baseline:pca"
BASELINE_EXPRESSION = "baseline:expression"

# arpack is deterministic for a fixed start vector, which scanpy draws from random_state.
_RANDOM_STATE = 0


def log_normalise(adata: ad.AnnData, drop_undetected: bool = True) -> ad.AnnData:
    """A new AnnData of the detected genes of ``adata``: counts scaled to 10,000 per cell, log1p.

    ``adata.X`` must hold raw counts. Genes with no count in any cell are dropped (they have
    nothing to rank or shift) unless ``drop_undetected`` is False (the study's recipe keeps
    them, and they shift the mean bins of the HVG selection). ``X`` of the result is CSR
    ``float32``; obs and var names are kept, obs columns are not.
    """
    x = adata.X
    x = sparse.csr_matrix(x, dtype=np.float32) if not sparse.issparse(x) else x.tocsr(copy=True)
    x = x.astype(np.float32)
    norm = ad.AnnData(X=x, obs=pd.DataFrame(index=adata.obs_names.copy()))
    norm.var_names = adata.var_names.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    detected = np.asarray((norm.X != 0).sum(axis=0)).ravel() > 0
    if not detected.any():
        raise ValueError("adata.X has no non-zero value; nothing to normalise")
    return norm[:, detected].copy() if drop_undetected else norm


def hvg_pca(lognorm: ad.AnnData, n_top_genes: int = 2500, n_pcs: int = 50) -> np.ndarray:
    """PCA (unscaled, centred) of the ``n_top_genes`` most variable genes of log-normalised data.

    HVGs are scanpy's flavour ``"seurat"`` on the log-normalised values. ``n_top_genes`` and
    ``n_pcs`` are clipped to what the data allow. Returns ``(cells, n_pcs)`` float64.
    """
    n_hvg = min(n_top_genes, lognorm.n_vars)
    data = lognorm
    if n_hvg < lognorm.n_vars:
        hvg = sc.pp.highly_variable_genes(
            lognorm, flavor="seurat", n_top_genes=n_hvg, inplace=False
        )
        data = lognorm[:, hvg["highly_variable"].to_numpy()]
    n_comps = min(n_pcs, min(data.n_obs, data.n_vars) - 1)
    if n_comps < 1:
        raise ValueError(f"need at least 2 cells and 2 genes for a PCA, got {data.shape}")
    # On sparse input scanpy centres implicitly, so the matrix is never densified.
    pca = sc.pp.pca(data.X, n_comps=n_comps, random_state=_RANDOM_STATE, svd_solver="arpack")
    return np.asarray(pca, dtype=np.float64)


def expression_matrix(lognorm: ad.AnnData) -> sparse.csr_matrix:
    """The log-normalised expression as a sparse CSR ``float32`` matrix (cells x genes).

    Sparse because a dense copy costs 4 bytes per cell and gene (80 MB per 1,000 cells at
    20,000 genes) where the data hold a few hundred values per cell.
    """
    return sparse.csr_matrix(lognorm.X, dtype=np.float32)


def baseline_embeddings(
    adata: ad.AnnData, n_top_genes: int = 2500, n_pcs: int = 50
) -> dict[str, np.ndarray]:
    """``{"baseline:pca": ..., "baseline:expression": ...}`` for the cells of ``adata`` (raw X).

    Rows are the cells in obs order, like a layer's embedding. The expression baseline is
    sparse (:func:`expression_matrix`).
    """
    lognorm = log_normalise(adata)
    return {
        BASELINE_PCA: hvg_pca(lognorm, n_top_genes=n_top_genes, n_pcs=n_pcs),
        BASELINE_EXPRESSION: expression_matrix(lognorm),
    }
