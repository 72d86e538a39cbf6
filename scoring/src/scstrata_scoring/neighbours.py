"""kNN-graph scores: do a representation's neighbourhoods match a reference's, or a label's?

* ``neighbourhood_overlap``: how many of a cell's k nearest neighbours (k = 30) in the
  representation are also among its k nearest in a reference representation.
* ``sequential_alignment`` (as in cz-benchmarks): how close, in an ordered label such as time,
  a cell's k = 15 nearest neighbours are to it, against random cells.

Neighbours are exact Euclidean nearest *other* cells (scikit-learn).
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

__all__ = [
    "alignment_score",
    "check_embedding",
    "knn_indices",
    "neighbourhood_overlap",
    "neighbourhood_overlap_per_cell",
    "random_label_distance",
    "sequential_alignment",
    "sequential_alignment_distances",
]


def knn_indices(representation: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows (exact, Euclidean), nearest first: ``(n, k)`` ints.

    A row is never its own neighbour, even when it has exact duplicates. ``k`` is clipped to
    ``n - 1``.
    """
    rep = check_embedding(representation)
    n = rep.shape[0]
    k = min(int(k), n - 1)
    if k < 1:
        raise ValueError(f"need at least 2 rows for neighbours, got {n}")
    # kneighbors() without a query excludes each point itself, also among exact duplicates.
    found = NearestNeighbors(n_neighbors=k).fit(rep).kneighbors(return_distance=False)
    return np.asarray(found, dtype=np.int64)


def neighbourhood_overlap_per_cell(
    embedding: np.ndarray, reference_knn: np.ndarray, k: int | None = None
) -> np.ndarray:
    """Per cell *i*: :math:`|N_k^{emb}(i) \\cap N_k^{ref}(i)| / k`.

    :math:`N_k^{emb}(i)` are the ``k`` nearest other cells of *i* in ``embedding`` and
    :math:`N_k^{ref}(i)` the rows of ``reference_knn`` (the first ``k`` columns; by default
    all of them).
    """
    ref = np.asarray(reference_knn)
    k = ref.shape[1] if k is None else min(int(k), ref.shape[1])
    emb_knn = knn_indices(embedding, k)
    if emb_knn.shape[0] != ref.shape[0]:
        raise ValueError(f"embedding has {emb_knn.shape[0]} cells, reference {ref.shape[0]}")
    ref = ref[:, :k]
    shared = np.array([np.intersect1d(a, b, assume_unique=True).size for a, b in zip(emb_knn, ref)])
    return shared / float(k)


def neighbourhood_overlap(embedding: np.ndarray, reference: np.ndarray, k: int = 30) -> float:
    """Mean over cells of :math:`|N_k^{emb}(i) \\cap N_k^{ref}(i)| / k` (``k`` = 30).

    Both neighbourhoods are the ``k`` nearest other cells by Euclidean distance, in
    ``embedding`` and in ``reference`` (the reference PCA). 1 = identical kNN graphs; a
    random embedding scores about ``k / (n - 1)``.
    """
    return float(neighbourhood_overlap_per_cell(embedding, knn_indices(reference, k)).mean())


def sequential_alignment_distances(
    embedding: np.ndarray, labels: np.ndarray, k: int = 15
) -> np.ndarray:
    """Per cell *i*: :math:`d_i = \\frac{1}{k} \\sum_{j \\in N_k(i)} |l_i - l_j|`.

    :math:`N_k(i)` are the ``k`` nearest other cells of *i* in ``embedding`` (Euclidean) and
    :math:`l` the numeric (time) labels.
    """
    labels = np.asarray(labels, dtype=np.float64)
    knn = knn_indices(embedding, k)
    if knn.shape[0] != labels.size:
        raise ValueError(f"embedding has {knn.shape[0]} cells but {labels.size} labels")
    return np.abs(labels[:, None] - labels[knn]).mean(axis=1)


def random_label_distance(labels: np.ndarray) -> np.ndarray | float:
    """Expected :math:`|l_i - l_j|` of two distinct random cells, computed exactly.

    :math:`d_{random} = \\frac{2}{n(n-1)} \\sum_{i<j} |l_i - l_j|`, evaluated in
    :math:`O(n \\log n)` from the sorted labels :math:`s`:
    :math:`\\sum_{i<j} (s_j - s_i) = \\sum_j s_j (2j - n + 1)` (0-based *j*). A 2-D input gives
    one value per row.
    """
    arr = np.asarray(labels, dtype=np.float64)
    rows = np.atleast_2d(arr)
    n = rows.shape[1]
    if n < 2:
        raise ValueError("need at least 2 labels")
    s = np.sort(rows, axis=1)
    weights = 2.0 * np.arange(n) - n + 1.0
    value = 2.0 * (s * weights).sum(axis=1) / (n * (n - 1))
    return float(value[0]) if arr.ndim == 1 else value


def sequential_alignment(embedding: np.ndarray, labels: np.ndarray, k: int = 15) -> float:
    """cz-benchmarks' sequential alignment: :math:`\\mathrm{clip}(1 - d / d_{random}, 0, 1)`.

    :math:`d` is the mean over cells of :func:`sequential_alignment_distances` (mean
    :math:`|l_i - l_j|` over the ``k`` = 15 nearest neighbours *j* of *i*) and
    :math:`d_{random}` is :func:`random_label_distance` (the same for random neighbours).
    1 = neighbours share the cell's label; 0 = no better than random. NaN when every label
    is equal (:math:`d_{random} = 0`).
    """
    d = sequential_alignment_distances(embedding, labels, k).mean()
    return alignment_score(d, random_label_distance(np.asarray(labels, dtype=np.float64)))


def alignment_score(d: np.ndarray | float, d_random: np.ndarray | float) -> np.ndarray | float:
    """:math:`\\mathrm{clip}(1 - d / d_{random}, 0, 1)`, elementwise.

    NaN where :math:`d_{random} = 0` (every label equal: nothing to align).
    """
    d = np.asarray(d, dtype=np.float64)
    d_random = np.asarray(d_random, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(d_random > 0, np.clip(1.0 - d / d_random, 0.0, 1.0), np.nan)
    return float(score) if score.ndim == 0 else score


def check_embedding(embedding: np.ndarray) -> np.ndarray:
    """``embedding`` as a finite 2-D float64 array (cells x dims), or a ValueError."""
    emb = np.asarray(embedding, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embedding must be 2-D (cells x dims), got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embedding contains NaN or inf")
    return emb
