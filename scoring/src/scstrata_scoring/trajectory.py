"""Trajectory scores: does a layer's embedding order cells along the same pseudotime?

Following the layer study this package reproduces: the reference is diffusion pseudotime
(DPT; Haghverdi et al. 2016, *Nat. Methods* 13:845) on the PCA of log-normalised highly
variable genes (2,500 HVGs, 50 PCs, 30 neighbours), rooted at the first cell of the earliest
time point. Each layer gets DPT on a kNN graph of its own embedding, from the same root, and
is scored by Spearman's rank correlation with the reference (``dpt_spearman``) and with the
observed time points (``time_spearman``). Two graph-level scores need no pseudotime:
``neighbourhood_overlap`` (how many of a cell's k=30 neighbours in the layer are also its
neighbours in the reference PCA) and cz-benchmarks' ``sequential_alignment`` (do a cell's
k=15 neighbours carry time labels close to its own, against random cells).

Cells that DPT cannot reach from the root (another connected component of the kNN graph) get
an infinite pseudotime from scanpy. Here they are **ranked last**: all of them tie at a rank
above every reachable cell. This keeps every cell in every correlation, so layers are compared
on the same cells, and a layer whose graph falls apart is penalised rather than scored on the
easy remainder. The fraction of such cells is reported as ``dpt_unreachable_fraction`` so the
penalty stays visible.

Bootstrap intervals resample cells and recompute each score from per-cell quantities (the two
pseudotimes, per-cell overlaps and label distances); the kNN graphs and DPT are computed once
on all cells, since a resample with duplicated cells has no meaningful kNN graph.

``recipe="study"`` (:mod:`.recipe`) reproduces the layer study instead: HVGs are chosen among
all genes of the file (undetected ones included), cells unreachable in either pseudotime are
left out of the two Spearman correlations, and the neighbourhood overlap compares scanpy's
stored neighbours (29 for a 30-neighbour graph) padded with cell 0 to 30 slots.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from threadpoolctl import threadpool_limits

from .baselines import hvg_pca, log_normalise
from .neighbours import (
    Neighbours,
    alignment_score,
    check_embedding,
    knn_indices,
    label_distances,
    nearest_neighbours,
    neighbourhood_overlap,
    neighbourhood_overlap_per_cell,
    overlap_of_neighbours,
    random_label_distance,
    scanpy_neighbours,
    sequential_alignment,
    sequential_alignment_distances,
)
from .recipe import Recipe, check_recipe, padded_neighbours, padded_overlap_per_cell
from .resample import rowwise_spearman

__all__ = [
    "TRAJECTORY_METRICS",
    "TrajectoryEvidence",
    "TrajectoryReference",
    "embedding_pseudotime",
    "knn_indices",
    "neighbourhood_overlap",
    "neighbourhood_overlap_per_cell",
    "random_label_distance",
    "rank_unreachable_last",
    "reference_pseudotime",
    "root_cell",
    "sequential_alignment",
    "sequential_alignment_distances",
    "time_values",
    "trajectory_evidence",
    "trajectory_reference",
    "trajectory_scores",
    "trajectory_statistics",
]

#: Metrics of the trajectory task, main score first.
TRAJECTORY_METRICS = (
    "dpt_spearman",
    "time_spearman",
    "neighbourhood_overlap",
    "sequential_alignment",
    "dpt_unreachable_fraction",
)

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


@dataclass(frozen=True)
class TrajectoryReference:
    """What every layer of one data set is compared with.

    ``pseudotime``: reference DPT per cell (``inf`` if unreachable); ``root``: its root cell;
    ``pca``: the representation it was computed on (also the ``baseline:pca``); ``time``:
    observed time labels as floats; ``knn``: each cell's ``k`` nearest neighbours in ``pca``.
    """

    pseudotime: np.ndarray
    root: int
    pca: np.ndarray
    time: np.ndarray
    knn: np.ndarray
    recipe: Recipe = "scstrata"

    @property
    def n_cells(self) -> int:
        return int(self.pseudotime.size)


def trajectory_reference(
    adata: ad.AnnData,
    time_key: str,
    n_top_genes: int = 2500,
    n_pcs: int = 50,
    n_neighbors: int = 30,
    k_overlap: int = 30,
    recipe: Recipe = "scstrata",
) -> TrajectoryReference:
    """The reference of the trajectory task for ``adata`` (raw counts in ``X``).

    :func:`~scstrata_scoring.baselines.log_normalise` (10,000 counts per cell, ``log1p``;
    detected genes, or all genes under the study recipe),
    :func:`~scstrata_scoring.baselines.hvg_pca` (``n_top_genes`` HVGs of flavour
    ``"seurat"``, ``n_pcs`` unscaled PCs), a kNN graph with ``n_neighbors``, a diffusion map,
    and DPT from :func:`root_cell` of ``adata.obs[time_key]``. Every cell needs a time label
    (drop the others first, as :func:`~scstrata_scoring.data.read_trajectory` does).
    """
    recipe = check_recipe(recipe)
    time = time_values(adata.obs[time_key])
    if np.isnan(time).any():
        raise ValueError(
            f"obs[{time_key!r}] is missing for {int(np.isnan(time).sum())} cells; drop them first"
        )
    root = root_cell(adata.obs[time_key])
    lognorm = log_normalise(adata, drop_undetected=recipe == "scstrata")
    pca = hvg_pca(lognorm, n_top_genes=n_top_genes, n_pcs=n_pcs)
    neighbours = nearest_neighbours(pca, max(n_neighbors - 1, k_overlap))
    pseudotime = _dpt(pca, root, n_neighbors, neighbours)
    if recipe == "study":
        knn = padded_neighbours(neighbours.first(_stored(n_neighbors, pca)), k_overlap)
    else:
        knn = neighbours.first(k_overlap)
    return TrajectoryReference(pseudotime, root, pca, time, knn, recipe)


def reference_pseudotime(
    adata: ad.AnnData,
    time_key: str,
    n_top_genes: int = 2500,
    n_pcs: int = 50,
    n_neighbors: int = 30,
) -> tuple[np.ndarray, int]:
    """Reference DPT and its root, as in :func:`trajectory_reference` (which see).

    Unlike :func:`trajectory_reference`, cells without a time label are allowed (they are
    never the root). Returns the pseudotime per cell in obs order (``inf`` for cells
    unreachable from the root) and the root's index.
    """
    root = root_cell(adata.obs[time_key])
    pca = hvg_pca(log_normalise(adata), n_top_genes=n_top_genes, n_pcs=n_pcs)
    return _dpt(pca, root, n_neighbors), root


def embedding_pseudotime(embedding: np.ndarray, root: int, n_neighbors: int = 30) -> np.ndarray:
    """DPT on a kNN graph of ``embedding`` itself (Euclidean, no reduction), from ``root``.

    Returns the pseudotime per row, ``inf`` for rows unreachable from the root.
    """
    emb = check_embedding(embedding)
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


@dataclass(frozen=True)
class TrajectoryEvidence:
    """Per-cell quantities of one representation, from which every trajectory score follows.

    ``pseudotime``: its DPT from the reference root (``inf`` if unreachable); ``overlap``: per
    cell neighbourhood overlap with the reference; ``alignment``: per cell mean label distance
    to its neighbours (:func:`sequential_alignment_distances`).
    """

    pseudotime: np.ndarray
    overlap: np.ndarray
    alignment: np.ndarray


def trajectory_evidence(
    embedding: np.ndarray,
    reference: TrajectoryReference,
    n_neighbors: int = 30,
    k_alignment: int = 15,
) -> TrajectoryEvidence:
    """DPT, kNN overlap and label distances of ``embedding`` against ``reference``.

    One neighbour search serves all three (DPT's graph, the overlap, the alignment). The
    overlap follows the reference's recipe: exact neighbours, or (study) the padded tables of
    the graphs the two pseudotimes were computed on (scanpy stores ``n_neighbors - 1``
    neighbours of each cell).
    """
    emb = check_embedding(embedding)
    if emb.shape[0] != reference.n_cells:
        raise ValueError(f"embedding has {emb.shape[0]} cells, reference {reference.n_cells}")
    k_overlap = reference.knn.shape[1]
    nn = nearest_neighbours(emb, max(n_neighbors - 1, k_overlap, k_alignment))
    pseudotime = _dpt(emb, reference.root, n_neighbors, nn)
    if reference.recipe == "study":
        table = padded_neighbours(nn.first(_stored(n_neighbors, emb)), k_overlap)
        overlap = padded_overlap_per_cell(table, reference.knn, k_overlap)
    else:
        overlap = overlap_of_neighbours(nn.first(k_overlap), reference.knn)
    return TrajectoryEvidence(
        pseudotime=pseudotime,
        overlap=overlap,
        alignment=label_distances(nn.first(k_alignment), reference.time),
    )


def trajectory_statistics(
    evidence: TrajectoryEvidence, reference: TrajectoryReference, idx: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Every trajectory score on the cells ``idx`` (rows of resampled indices), vectorised.

    ``idx`` is ``(n_draws, n)``; ``None`` means all cells once. Each score is an array with one
    value per row. Definitions: see :data:`TRAJECTORY_METRICS` and the module docstring;
    unreachable cells are ranked last (:func:`rank_unreachable_last`), or under the study
    recipe left out of ``dpt_spearman`` and ``time_spearman`` (cells unreachable in either
    pseudotime for the first, in the layer's for the second).
    """
    if idx is None:
        idx = np.arange(reference.n_cells)[None, :]
    if reference.recipe == "study":
        layer_pt, ref_pt = evidence.pseudotime, reference.pseudotime
        correlate = _finite_rowwise_spearman
    else:
        layer_pt = rank_unreachable_last(evidence.pseudotime)
        ref_pt = rank_unreachable_last(reference.pseudotime)
        correlate = rowwise_spearman
    d = evidence.alignment[idx].mean(axis=1)
    d_random = np.atleast_1d(random_label_distance(reference.time[idx]))
    return {
        "dpt_spearman": correlate(layer_pt[idx], ref_pt[idx]),
        "time_spearman": correlate(layer_pt[idx], reference.time[idx]),
        "neighbourhood_overlap": evidence.overlap[idx].mean(axis=1),
        "sequential_alignment": alignment_score(d, d_random),
        "dpt_unreachable_fraction": (~np.isfinite(evidence.pseudotime))[idx].mean(axis=1),
    }


def trajectory_scores(
    embedding: np.ndarray,
    reference_pt: np.ndarray,
    root: int,
    time: Sequence | np.ndarray | pd.Series | None = None,
    n_neighbors: int = 30,
    *,
    reference_rep: np.ndarray | None = None,
    k_overlap: int = 30,
    k_alignment: int = 15,
) -> dict[str, float]:
    """Score how well ``embedding`` recovers the reference trajectory (point estimates).

    * ``dpt_spearman``: Spearman's :math:`\\rho` between the embedding's DPT (from ``root``)
      and ``reference_pt``.
    * ``time_spearman`` (only when ``time`` is given): Spearman's :math:`\\rho` between the
      embedding's DPT and the observed time labels, over cells with a label.
    * ``sequential_alignment`` (only when ``time`` is given and labelled everywhere):
      :func:`sequential_alignment` with ``k_alignment`` neighbours.
    * ``neighbourhood_overlap`` (only when ``reference_rep`` is given):
      :func:`neighbourhood_overlap` with ``k_overlap`` neighbours.
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
        if labelled.all():
            scores["sequential_alignment"] = sequential_alignment(embedding, t, k_alignment)
    if reference_rep is not None:
        scores["neighbourhood_overlap"] = neighbourhood_overlap(embedding, reference_rep, k_overlap)
    return scores


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho, NaN when either side is constant (no ranking to compare)."""
    if a.size < 3:
        return float("nan")
    return float(rowwise_spearman(a[None, :], b[None, :])[0])


def _finite_rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`rowwise_spearman` of each row over the columns finite on both sides."""
    finite = np.isfinite(a) & np.isfinite(b)
    if finite.all():
        return rowwise_spearman(a, b)
    out = np.full(a.shape[0], np.nan)
    for row in range(a.shape[0]):
        keep = finite[row]
        if keep.sum() >= 3:
            out[row] = rowwise_spearman(a[row, keep][None, :], b[row, keep][None, :])[0]
    return out


def _stored(n_neighbors: int, rep) -> int:
    """How many other cells scanpy stores per cell for ``n_neighbors``: the cell counts."""
    return min(n_neighbors, rep.shape[0] - 1) - 1


def _dpt(rep, root: int, n_neighbors: int, neighbours: Neighbours | None = None) -> np.ndarray:
    """DPT from ``root`` on a kNN graph of ``rep``, on a scratch AnnData.

    The graph is ``neighbours`` (searched here if None), handed to scanpy as ``transformer``
    so that scanpy never searches itself; ``n_neighbors`` counts the cell, as in scanpy.
    """
    n_cells = rep.shape[0]
    if n_cells < 3:
        raise ValueError(f"DPT needs at least 3 cells, got {n_cells}")
    n_neighbors = min(n_neighbors, n_cells - 1)
    if neighbours is None:
        neighbours = nearest_neighbours(rep, n_neighbors - 1)
    scratch = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(n_cells).astype(str)))
    scratch.obsm["X_rep"] = rep  # only its shape is used: scanpy gets the graph above
    # One BLAS thread: ARPACK's Lanczos steps (diffusion map) are small memory-bound products
    # that more threads do not speed up; on a loaded host, idle BLAS threads spinning for work
    # made DPT take 4-5 x the CPU and 5-7 x the wall time with 2 threads (bench/RESULTS.md).
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        # scanpy warns about the empty X of the scratch object; it is never used.
        warnings.simplefilter("ignore", UserWarning)
        sc.pp.neighbors(
            scratch,
            use_rep="X_rep",
            transformer=scanpy_neighbours(neighbours, n_neighbors),
            random_state=_RANDOM_STATE,
        )
        n_comps = min(_N_DIFFMAP_COMPS, n_cells - 2)
        sc.tl.diffmap(scratch, n_comps=n_comps, random_state=_RANDOM_STATE)
        scratch.uns["iroot"] = int(root)
        sc.tl.dpt(scratch, n_dcs=min(_N_DCS, n_comps))
    return scratch.obs["dpt_pseudotime"].to_numpy(dtype=np.float64)
