"""kNN search and kNN-graph scores: do a representation's neighbourhoods match a reference's?

* :func:`nearest_neighbours`: each cell's ``k`` nearest *other* cells (Euclidean), searched
  once per representation and shared by DPT's graph and both scores below.
* ``neighbourhood_overlap``: how many of a cell's k nearest neighbours (k = 30) in the
  representation are also among its k nearest in a reference representation.
* ``sequential_alignment`` (as in cz-benchmarks): how close, in an ordered label such as time,
  a cell's k = 15 nearest neighbours are to it, against random cells.

Search (``method="auto"``): exact (scikit-learn) up to :data:`EXACT_MAX_CELLS` cells, or at
any size for dense data with at most 15 dimensions, where scikit-learn searches a k-d tree in
about n log n. Otherwise exact search costs n² distances, so it is approximate: pynndescent
(the index scanpy and UMAP use), seeded and single-threaded so that equal inputs give equal
graphs. Its recall of exact neighbours is tested: 0.994 at k = 30 on 3,000 cells of Gaussian
noise in 32 dimensions, the hard case (``tests/scoring/test_scoring_scale.py``).

Sparse data (the expression baseline: every detected gene) are searched approximately in
their :data:`SPARSE_PCA_COMPONENTS`-component PCA (scanpy's ARPACK PCA, centred implicitly,
so never densified), not in the genes themselves: pynndescent on thousands of sparse
columns had not finished 30,000 cells in 100 CPU seconds, where the PCA and a search of
it take seconds. The PCA keeps the main axes of variation and drops the rest, so the
neighbours differ from exact ones in all genes (about half to two thirds shared on simulated
trajectories, where exact neighbours in every gene are largely chosen by noise), while the
pseudotime built on them agrees (Spearman 0.96-0.99 with DPT on the exact graph) and
follows the true order as well (both tested on small data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import sparse
from sklearn.neighbors import NearestNeighbors

__all__ = [
    "EXACT_MAX_CELLS",
    "SPARSE_PCA_COMPONENTS",
    "KnnMethod",
    "Neighbours",
    "alignment_score",
    "check_embedding",
    "knn_indices",
    "label_distances",
    "nearest_neighbours",
    "neighbourhood_overlap",
    "neighbourhood_overlap_per_cell",
    "overlap_of_neighbours",
    "random_label_distance",
    "scanpy_neighbours",
    "sequential_alignment",
    "sequential_alignment_distances",
    "sparse_pca",
]

#: Above this many cells, ``method="auto"`` searches approximately (unless the data are dense
#: with at most :data:`TREE_MAX_DIMS` dimensions): exact search there costs n² distances.
EXACT_MAX_CELLS = 10_000
#: Dense data with at most this many dimensions are searched exactly by a k-d tree at any
#: size (scikit-learn's own rule for when a tree beats brute force).
TREE_MAX_DIMS = 15
#: Sparse data searched approximately are first reduced to this many principal components
#: (twice the reference PCA's 50: the baseline keeps every gene, not 2,500 HVGs).
SPARSE_PCA_COMPONENTS = 100

KnnMethod = Literal["auto", "exact", "approximate"]

# Distances held at a time by the exact sparse search (float64): 32 MB (~130 MB peak).
_SPARSE_BLOCK = 1 << 22
# Rows checked for NaN at a time: bounds the temporary mask for a large embedding.
_CHECK_ROWS = 8192


@dataclass(frozen=True)
class Neighbours:
    """Each row's ``k`` nearest other rows, nearest first.

    ``indices``: ``(n, k)`` int64; ``distances``: ``(n, k)`` Euclidean; ``exact``: whether the
    search was exact (else approximate, pynndescent).
    """

    indices: np.ndarray
    distances: np.ndarray
    exact: bool

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def first(self, k: int) -> np.ndarray:
        """The ``k`` nearest of each row (``k`` clipped to the neighbours held)."""
        return self.indices[:, : min(int(k), self.k)]


def nearest_neighbours(
    representation, k: int, *, method: KnnMethod = "auto", seed: int = 0
) -> Neighbours:
    """Each row's ``k`` nearest other rows (Euclidean), nearest first.

    ``representation`` is a dense ``(n, dims)`` array or a sparse matrix. A row is never its
    own neighbour, even when it has exact duplicates; ``k`` is clipped to ``n - 1``.
    ``method``: ``"exact"``, ``"approximate"`` (pynndescent, seeded by ``seed``) or ``"auto"``
    (see the module docstring).
    """
    rep = check_embedding(representation)
    n = rep.shape[0]
    k = min(int(k), n - 1)
    if k < 1:
        raise ValueError(f"need at least 2 rows for neighbours, got {n}")
    if method not in ("auto", "exact", "approximate"):
        raise ValueError(f"method must be 'auto', 'exact' or 'approximate', got {method!r}")
    if method == "auto":
        method = "exact" if _exact_is_cheap(rep) else "approximate"
    if method == "exact" and sparse.issparse(rep):
        return _exact_sparse(rep, k)
    if method == "exact":
        # kneighbors() without a query excludes each point itself, also among exact duplicates.
        dist, found = NearestNeighbors(n_neighbors=k).fit(rep).kneighbors()
        return Neighbours(np.asarray(found, dtype=np.int64), dist, exact=True)
    return _approximate(rep, k, seed)


def _exact_sparse(rep: sparse.csr_matrix, k: int) -> Neighbours:
    """Exact search of sparse rows: for a block of densified queries, one sparse x dense
    product with every row (about nnz x block operations, in bounded memory).

    scikit-learn's sparse path multiplies sparse by sparse, which here took 8 x the time and
    a gigabyte at 10,000 cells; this one holds ``n x block`` distances at a time.
    """
    n = rep.shape[0]
    sq = np.asarray(rep.multiply(rep).sum(axis=1), dtype=np.float64).ravel()
    block = max(1, _SPARSE_BLOCK // n)
    found = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        query = rep[start:stop].toarray()
        d2 = sq[start:stop, None] - 2.0 * np.asarray(rep @ query.T).T + sq[None, :]
        d2[np.arange(stop - start), np.arange(start, stop)] = np.inf  # never its own neighbour
        near = np.argpartition(d2, k - 1, axis=1)[:, :k]
        near_d2 = np.take_along_axis(d2, near, axis=1)
        order = np.lexsort((near, near_d2), axis=1)  # nearest first, ties by index
        found[start:stop] = np.take_along_axis(near, order, axis=1)
        dist[start:stop] = np.sqrt(np.maximum(np.take_along_axis(near_d2, order, axis=1), 0.0))
    return Neighbours(found, dist, exact=True)


def _exact_is_cheap(rep) -> bool:
    n, dims = rep.shape
    return n <= EXACT_MAX_CELLS or (not sparse.issparse(rep) and dims <= TREE_MAX_DIMS)


def _approximate(rep, k: int, seed: int) -> Neighbours:
    """pynndescent with UMAP's (and scanpy's) size-dependent trees and iterations; sparse
    rows are searched in their PCA (:func:`sparse_pca`)."""
    from pynndescent import NNDescent  # imported here: numba compiles it on first use

    if sparse.issparse(rep):
        rep = sparse_pca(rep, seed=seed)
    n = rep.shape[0]
    index = NNDescent(
        rep,
        n_neighbors=k + 1,  # the query is the data, so each row usually finds itself
        metric="euclidean",
        n_trees=min(64, 5 + round(n**0.5 / 20.0)),
        n_iters=max(5, round(np.log2(n))),
        random_state=seed,
        n_jobs=1,  # with a seed and one thread the graph is reproducible
    )
    found, dist = index.neighbor_graph
    if (found < 0).any():
        raise RuntimeError(
            f"pynndescent found fewer than {k} neighbours for some of {n} cells; "
            "use method='exact' or a smaller k"
        )
    # Drop each row's own entry; a row that did not find itself drops its farthest instead.
    is_self = found == np.arange(n)[:, None]
    keep = ~is_self
    keep[~is_self.any(axis=1), -1] = False
    return Neighbours(
        found[keep].reshape(n, k).astype(np.int64), dist[keep].reshape(n, k), exact=False
    )


def sparse_pca(rep: sparse.csr_matrix, n_comps: int = SPARSE_PCA_COMPONENTS, seed: int = 0):
    """The first ``n_comps`` principal components of sparse rows, ``(n, n_comps)`` float32.

    scanpy's ARPACK PCA on sparse input centres implicitly (the matrix is never densified);
    ``n_comps`` is clipped to what the shape allows.
    """
    import scanpy as sc

    n_comps = min(int(n_comps), min(rep.shape) - 1)
    pcs = sc.pp.pca(rep, n_comps=n_comps, svd_solver="arpack", random_state=seed)
    return np.ascontiguousarray(pcs, dtype=np.float32)


def knn_indices(representation, k: int, *, method: KnnMethod = "auto") -> np.ndarray:
    """Each row's ``k`` nearest other rows, nearest first: ``(n, k)`` ints.

    :func:`nearest_neighbours` without the distances.
    """
    return nearest_neighbours(representation, k, method=method).indices


class _PrecomputedNeighbours:
    """A kNN graph we built, in the transformer interface ``scanpy.pp.neighbors`` accepts.

    scanpy asks a transformer for a sparse distance matrix with the same number of entries
    in every row, each row's own cell (distance 0) among them.
    """

    def __init__(self, neighbours: Neighbours, n_neighbors: int) -> None:
        self.n_neighbors = int(n_neighbors)
        others = self.n_neighbors - 1
        if not 1 <= others <= neighbours.k:
            raise ValueError(
                f"n_neighbors={n_neighbors} needs 1..{neighbours.k} neighbours besides the cell"
            )
        n = neighbours.indices.shape[0]
        cols = np.hstack([np.arange(n)[:, None], neighbours.indices[:, :others]])
        dist = np.hstack([np.zeros((n, 1)), neighbours.distances[:, :others]])
        # csr_matrix, not csr_array: scanpy 1.11 calls getnnz(), which csr_array lacks.
        # Explicit zeros on the diagonal are kept, so every row has n_neighbors entries.
        self._graph = sparse.csr_matrix(
            (dist.ravel(), cols.ravel(), np.arange(0, n * self.n_neighbors + 1, self.n_neighbors)),
            shape=(n, n),
        )

    def get_params(self, deep: bool = True) -> dict[str, int]:
        return {"n_neighbors": self.n_neighbors}

    def fit_transform(self, x, y=None) -> sparse.csr_matrix:
        return self._graph


def scanpy_neighbours(neighbours: Neighbours, n_neighbors: int) -> _PrecomputedNeighbours:
    """``neighbours`` as a ``transformer=`` for ``scanpy.pp.neighbors``, with ``n_neighbors``.

    As in scanpy, ``n_neighbors`` counts the cell itself: its graph holds each cell and its
    ``n_neighbors - 1`` nearest others. scanpy then never searches itself (its own search
    fails at 8,192 cells or more with the pinned scanpy 1.11.5 / pynndescent 0.7.0).
    """
    return _PrecomputedNeighbours(neighbours, n_neighbors)


def overlap_of_neighbours(knn: np.ndarray, reference_knn: np.ndarray) -> np.ndarray:
    """Per row: the share of ``knn[i]`` (``k`` distinct indices) that is in ``reference_knn[i]``.

    Both are ``(n, k)``; entries within a row are distinct. Vectorised: in each row of the two
    sorted together, every shared index shows as two equal neighbours.
    """
    knn = np.asarray(knn)
    ref = np.asarray(reference_knn)
    if knn.shape != ref.shape:
        raise ValueError(f"neighbour tables differ in shape: {knn.shape} vs {ref.shape}")
    both = np.sort(np.hstack([knn, ref]), axis=1)
    return (both[:, 1:] == both[:, :-1]).sum(axis=1) / float(knn.shape[1])


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
    return overlap_of_neighbours(emb_knn, ref[:, :k])


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
    return label_distances(knn_indices(embedding, k), labels)


def label_distances(knn: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row *i* of ``knn``: the mean of :math:`|l_i - l_j|` over its neighbours *j*."""
    labels = np.asarray(labels, dtype=np.float64)
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


def check_embedding(embedding):
    """``embedding`` as a finite 2-D float array (cells x dims), or a ValueError.

    float32 and float64 are kept as they are (no copy); other dtypes become float64. A sparse
    matrix stays sparse (CSR) and only its stored values are checked.
    """
    if sparse.issparse(embedding):
        emb = sparse.csr_matrix(embedding)
        if emb.dtype not in (np.float32, np.float64):
            emb = emb.astype(np.float64)
        values = emb.data
    else:
        emb = np.asarray(embedding)
        if emb.dtype not in (np.float32, np.float64):
            emb = emb.astype(np.float64)
        if emb.ndim != 2:
            raise ValueError(f"embedding must be 2-D (cells x dims), got shape {emb.shape}")
        values = emb
    # In blocks of rows, so that the check needs no mask the size of the embedding.
    for start in range(0, values.shape[0], _CHECK_ROWS):
        if not np.isfinite(values[start : start + _CHECK_ROWS]).all():
            raise ValueError("embedding contains NaN or inf")
    return emb
