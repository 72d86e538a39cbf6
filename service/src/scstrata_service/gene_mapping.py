"""A request's columns against a model's genes (shared by the tokenizers): the mapping, the
columns in the model's gene order or each cell's expressed genes in column order, and the two
checks every tokenizer makes on them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from scstrata_service.contract import InputError, listed


class GeneColumns:
    """A request's gene names -> the model's gene index per input column (-1 = unknown), and
    the unknown names.

    Remembers the last few gene lists: a client sends the same list with every chunk, and each
    request is looked up twice (checked on arrival, tokenized later). For 24k genes a lookup
    is 3 ms of dictionary work; a remembered list costs a tuple hash and compare, 0.7 ms. The
    arrays returned are shared between callers and therefore read-only.
    """

    def __init__(self, lookup: Callable[[str], int], remember: int = 16):
        self._lookup = lookup
        self._cached = functools.lru_cache(maxsize=remember)(self._map)

    def __call__(self, genes: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
        return self._cached(tuple(genes))

    def _map(self, genes: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
        columns = np.fromiter(map(self._lookup, genes), dtype=np.int64, count=len(genes))
        columns.flags.writeable = False
        unmapped = tuple(gene for gene, column in zip(genes, columns) if column < 0)
        return columns, unmapped


def to_model_genes(counts: sp.csr_matrix, columns: np.ndarray, n_genes: int) -> sp.csr_matrix:
    """Cells x the model's ``n_genes``: input column ``j`` goes to ``columns[j]`` (-1 = dropped);
    columns mapped onto the same gene add up; genes no column maps to are zero. float64,
    sorted indices, no stored zeros."""
    mapped = np.flatnonzero(columns >= 0)
    selector = sp.csr_matrix(
        (np.ones(len(mapped)), (mapped, columns[mapped])), shape=(counts.shape[1], n_genes)
    )
    out = (sp.csr_matrix(counts, dtype=np.float64) @ selector).tocsr()
    out.eliminate_zeros()
    out.sort_indices()
    return out


def mapped_totals(counts: sp.csr_matrix, columns: np.ndarray) -> np.ndarray:
    """Per cell, the sum of its values over the columns a model knows (``columns >= 0``): the
    row sums of :func:`to_model_genes` without building that matrix (a cheap check)."""
    known = (columns >= 0).astype(np.float64)
    return np.asarray(sp.csr_matrix(counts) @ known).ravel()


def mapped_nonzeros(counts: sp.csr_matrix, columns: np.ndarray) -> np.ndarray:
    """Per cell, how many of its non-zero values lie in columns a model knows."""
    counts = sp.csr_matrix(counts)
    row_of = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    keep = (columns[counts.indices] >= 0) & (counts.data != 0)
    return np.bincount(row_of[keep], minlength=counts.shape[0])


def expressed(
    counts: sp.csr_matrix, columns: np.ndarray, *, positive_only: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell, the known genes it expresses (non-zero, or > 0 with ``positive_only``), in
    column order: cell offsets, gene indices (``columns``' values) and float32 values."""
    counts = sp.csr_matrix(counts)
    if not counts.has_sorted_indices:
        counts = counts.sorted_indices()  # a copy: the caller's matrix is left alone
    row_of = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    ids = columns[counts.indices]
    keep = (ids >= 0) & ((counts.data > 0) if positive_only else (counts.data != 0))
    n = np.bincount(row_of[keep], minlength=counts.shape[0])
    offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
    return offsets, ids[keep], counts.data[keep].astype(np.float32)


def require_known_genes(
    genes: Sequence[str], columns: np.ndarray, where: str, fix: str | Callable[[], str]
) -> None:
    """An :class:`InputError` when no gene of the request is one of the model's: "genes: none
    of the N genes is in ``where``; ``fix``" (a function: called only then, for a hint that
    costs a pass over the names)."""
    if not (columns >= 0).any():
        text = fix() if callable(fix) else fix
        raise InputError(f"genes: none of the {len(genes)} genes is in {where}; {text}")


def require_expressed(
    counts: sp.csr_matrix,
    columns: np.ndarray,
    model: str,
    fix: str = "Drop these cells (or send more genes).",
) -> None:
    """An :class:`InputError` listing the cells that express none of the model's genes (the
    ``model`` would have nothing to embed for them)."""
    empty = np.flatnonzero(mapped_nonzeros(counts, columns) == 0)
    if len(empty):
        raise InputError(
            f"cells: {len(empty)} cell(s) express none of the model's genes, so {model} has "
            f"nothing to embed: rows [{listed(empty)}]. {fix}"
        )
