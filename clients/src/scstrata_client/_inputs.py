"""Turn what users hold (AnnData, SciPy sparse, NumPy) into the CSR + gene list we send."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp


def is_anndata(obj: Any) -> bool:
    """True for an AnnData object, without importing anndata.

    anndata takes most of a second to import; if the caller never imported it, ``obj``
    cannot be an AnnData, so the client stays quick to import.
    """
    module = sys.modules.get("anndata")
    return module is not None and isinstance(obj, module.AnnData)


def as_csr(X: Any, genes: Sequence[str] | None = None) -> tuple[sp.csr_matrix, list[str]]:
    """Return ``(cells x genes CSR float32, gene names)`` for any supported input.

    ``X`` may be an AnnData (counts from ``.X``, genes from ``.var_names`` unless ``genes``
    is given), any SciPy sparse matrix or array, or a 2-D NumPy array (or array-like).
    Raises ``ValueError``/``TypeError`` naming the offending argument.
    """
    if is_anndata(X):
        if genes is None:
            genes = X.var_names
        if X.X is None:
            raise ValueError("X: the AnnData has no .X matrix; put the counts in .X")
        matrix = X.X
    else:
        matrix = X
    if genes is None:
        raise ValueError("genes: required when X is a matrix (one name per column of X)")
    if isinstance(genes, str):
        # A bare string is a Sequence[str] of characters, which is never what was meant.
        raise TypeError("genes: expected a sequence of gene names, got a single string")

    csr = _to_csr_float32(matrix)
    gene_list = [str(g) for g in genes]
    n_cells, n_genes = csr.shape
    if len(gene_list) != n_genes:
        raise ValueError(
            f"genes: got {len(gene_list)} names for {n_genes} columns of X; "
            "pass one gene name per column"
        )
    if n_cells == 0:
        raise ValueError("X: has no cells (0 rows)")
    if n_genes == 0:
        raise ValueError("X: has no genes (0 columns)")
    if not np.isfinite(csr.data).all():
        # JSON has no NaN/Infinity; catch it here with a clear message instead of a 4xx.
        raise ValueError("X: contains NaN or infinite values")
    return csr, gene_list


def _to_csr_float32(matrix: Any) -> sp.csr_matrix:
    if sp.issparse(matrix):
        if len(matrix.shape) != 2:
            raise ValueError(f"X: expected a 2-D matrix (cells x genes), got shape {matrix.shape}")
        # csr_matrix (not csr_array) so that row slicing behaves the same for every input.
        return sp.csr_matrix(matrix, dtype=np.float32)
    if hasattr(matrix, "to_memory"):
        # anndata's backed sparse datasets (AnnData opened with backed="r").
        return _to_csr_float32(matrix.to_memory())
    try:
        dense = np.asarray(matrix)
    except Exception as exc:
        raise TypeError(
            f"X: expected AnnData, a SciPy sparse matrix or a 2-D NumPy array, "
            f"got {type(matrix).__name__}"
        ) from exc
    if dense.ndim != 2:
        raise ValueError(f"X: expected a 2-D matrix (cells x genes), got shape {dense.shape}")
    if not (np.issubdtype(dense.dtype, np.number) or dense.dtype == np.bool_):
        raise TypeError(f"X: expected numeric values, got dtype {dense.dtype}")
    return sp.csr_matrix(dense, dtype=np.float32)


def chunk_ranges(n_rows: int, chunk_size: int) -> list[tuple[int, int]]:
    """Half-open row ranges ``[(0, c), (c, 2c), ...]`` covering ``0..n_rows`` in order."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be at least 1, got {chunk_size}")
    if n_rows < 0:
        raise ValueError(f"n_rows: must be non-negative, got {n_rows}")
    return [(start, min(start + chunk_size, n_rows)) for start in range(0, n_rows, chunk_size)]


def select_counts(
    X: Any,
    genes: Sequence[str] | None,
    counts_layer: str | None = None,
    gene_column: str | None = None,
) -> tuple[Any, Sequence[str] | None]:
    """``X`` and ``genes`` with scanpy's choices applied: counts from
    ``adata.layers[counts_layer]``, gene names from ``adata.var[gene_column]``."""
    if counts_layer is None and gene_column is None:
        return X, genes
    if not is_anndata(X):
        raise TypeError(
            "counts_layer and gene_column need X to be an AnnData (or a path to an .h5ad or .zarr)"
        )
    adata = X
    if gene_column is not None:
        if gene_column not in adata.var.columns:
            known = ", ".join(map(str, adata.var.columns)) or "none"
            raise ValueError(f"gene_column: adata.var has no column {gene_column!r} (has: {known})")
        genes = [str(g) for g in adata.var[gene_column]]
    elif genes is None:
        genes = [str(g) for g in adata.var_names]
    if counts_layer is not None:
        if counts_layer not in adata.layers:
            known = ", ".join(adata.layers.keys()) or "none"
            raise ValueError(f"counts_layer: no layer {counts_layer!r} (has: {known})")
        return adata.layers[counts_layer], genes
    return adata.X, genes
