"""Moving a request's columns into a model's gene order (shared by the tokenizers)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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
