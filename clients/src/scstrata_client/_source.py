"""Where a job's cells come from, a chunk of rows at a time.

``InMemoryRows`` holds a CSR matrix (what ``as_csr`` makes of AnnData, SciPy or NumPy input).
``LazyRows`` reads rows from a file only when a chunk is sent: an AnnData opened with
``backed="r"``, or a path to an ``.h5ad`` file or an AnnData ``.zarr`` store (``X``, or one of
its ``layers``, read through anndata's ``sparse_dataset``, or as a dense array). Either way a
chunk comes out canonical (``canonical_csr``) and checked for non-finite values, so a streamed
run's memory holds the chunks in flight, never the whole input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._inputs import _to_csr_float32, as_csr, is_anndata, select_counts
from ._protocol import canonical_csr


class InMemoryRows:
    """Rows of a matrix already in memory, made canonical a chunk at a time (a canonical copy
    of the whole input would cost its size again)."""

    def __init__(self, cells: sp.csr_matrix, genes: list[str]):
        self.cells = cells
        self.genes = genes

    @property
    def n_cells(self) -> int:
        return int(self.cells.shape[0])

    @property
    def indptr(self) -> np.ndarray:
        return self.cells.indptr

    def nnz(self, start: int, stop: int) -> int | None:
        # Stored entries: duplicates and explicit zeros (dropped when sent) count, which only
        # matters to the choice of transport near its threshold.
        return int(self.cells.indptr[stop] - self.cells.indptr[start])

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        return canonical_csr(self.cells[start:stop])


class LazyRows:
    """Rows read from a backed matrix (anndata's backed sparse dataset, h5py or zarr array)."""

    def __init__(self, matrix: Any, genes: list[str], indptr: np.ndarray | None, owner: Any):
        self._matrix = matrix
        self.genes = genes
        self.indptr = indptr
        self._owner = owner  # keeps the file open (a backed AnnData or zarr group)
        shape = tuple(matrix.shape)
        if len(shape) != 2:
            raise ValueError(f"X: expected a 2-D matrix (cells x genes), got shape {shape}")
        if shape[1] != len(genes):
            raise ValueError(
                f"genes: got {len(genes)} names for {shape[1]} columns of X; "
                "pass one gene name per column"
            )
        if shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"X: has no {'cells' if shape[0] == 0 else 'genes'}")
        self._n_cells = int(shape[0])

    @property
    def n_cells(self) -> int:
        return self._n_cells

    def nnz(self, start: int, stop: int) -> int | None:
        if self.indptr is None:
            return None
        return int(self.indptr[stop] - self.indptr[start])

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        chunk = _to_csr_float32(self._matrix[start:stop])
        if not np.isfinite(chunk.data).all():
            raise ValueError(f"X: rows {start}:{stop} contain NaN or infinite values")
        return canonical_csr(chunk)


RowSource = InMemoryRows | LazyRows


def open_rows(
    X: Any,
    genes: Sequence[str] | None = None,
    *,
    counts_layer: str | None = None,
    gene_column: str | None = None,
) -> RowSource:
    """A row source for any supported input: a path (``.h5ad``, ``.zarr``), an AnnData
    (in memory or backed), a SciPy sparse matrix, a 2-D NumPy array, or a row source itself.

    ``counts_layer`` takes the counts from ``layers[counts_layer]`` and ``gene_column`` the
    gene names from ``var[gene_column]`` (of an AnnData, or of the file at a path, whose
    layer is then read a chunk of rows at a time like its ``X``).
    """
    if isinstance(X, InMemoryRows | LazyRows):
        return X
    if isinstance(X, str | os.PathLike):
        return _open_path(Path(X), genes, counts_layer, gene_column)
    if is_anndata(X) and X.isbacked and counts_layer is None:
        # (A backed AnnData holds its layers in memory already: only X is read lazily.)
        _, names = select_counts(X, genes, None, gene_column)
        return _lazy(X.X, X.var_names if names is None else names, X)
    matrix, names = select_counts(X, genes, counts_layer, gene_column)
    cells, gene_list = as_csr(matrix, names)
    return InMemoryRows(cells, gene_list)


def _open_path(
    path: Path, genes: Sequence[str] | None, counts_layer: str | None, gene_column: str | None
) -> LazyRows:
    """Open the counts (``X``, or ``layers/<counts_layer>``) and ``var`` only: ``obs`` (whose
    index alone is ~60 bytes a cell) is never read, so that memory does not grow with the
    cells."""
    import anndata as ad

    if not path.exists():
        raise ValueError(f"X: {path}: no such file or folder")
    if path.suffix == ".zarr" or path.is_dir():
        import zarr

        group: Any = zarr.open_group(path, mode="r")
        is_group: Any = zarr.Group
    else:
        import h5py

        group = h5py.File(path, "r")
        is_group = h5py.Group
    if counts_layer is None:
        if "X" not in group:
            raise ValueError(f"X: {path}: an AnnData file has an X; this one has none")
        node = group["X"]
    else:
        known = list(group["layers"].keys()) if "layers" in group else []
        if counts_layer not in known:
            raise ValueError(
                f"counts_layer: {path} has no layer {counts_layer!r} "
                f"(has: {', '.join(known) or 'none'})"
            )
        node = group["layers"][counts_layer]
    matrix = ad.io.sparse_dataset(node) if isinstance(node, is_group) else node
    names = genes
    if names is None or gene_column is not None:
        var = ad.io.read_elem(group["var"])
        if gene_column is None:
            names = var.index
        elif gene_column not in var.columns:
            known = ", ".join(map(str, var.columns)) or "none"
            raise ValueError(
                f"gene_column: {path} has no var column {gene_column!r} (has: {known})"
            )
        else:
            names = var[gene_column]
    return _lazy(matrix, names, group)


def _lazy(matrix: Any, genes: Sequence[str], owner: Any) -> LazyRows:
    if matrix is None:
        raise ValueError("X: the AnnData has no .X matrix; put the counts in .X")
    if isinstance(genes, str):
        raise TypeError("genes: expected a sequence of gene names, got a single string")
    indptr = None
    group = getattr(matrix, "group", None)  # anndata's backed sparse dataset
    if group is not None and getattr(matrix, "format", None) == "csr":
        indptr = np.asarray(group["indptr"][:])
    return LazyRows(matrix, [str(g) for g in genes], indptr, owner)
