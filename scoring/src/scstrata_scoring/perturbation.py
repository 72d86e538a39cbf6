"""Perturbation score: do perturbations that act alike in expression sit alike in a layer?

As in the layer study, per activation state (one context at a time):

* **Reference.** For each perturbation with at least ``min_cells`` cells, its expression shift
  against the non-targeting control on log-normalised data, :math:`\\delta_p = \\bar x_p -
  \\bar x_{ctrl}` per gene; its top ``n_top_genes`` genes by :math:`|t|` of Welch's t-test;
  each perturbation's profile is its shift on the union of all top genes, zero outside its
  own top genes ("zero-filled union"). Reference similarity = Spearman's :math:`\\rho`
  between profiles, for every pair of perturbations.
* **Layer.** The mean embedding per perturbation and the cosine similarity between means.
* **Score.** ``rsa_spearman``: Spearman's :math:`\\rho` between the upper triangles (pairs
  :math:`p < q`) of the two similarity matrices (representational similarity analysis;
  Kriegeskorte et al. 2008, *Front. Syst. Neurosci.* 2:4).
* **Null.** Shuffle the perturbation labels among the perturbed cells (the reference stays
  fixed), recompute the score; :math:`z = (s - \\bar s_0) / \\mathrm{sd}(s_0)` and the
  one-sided permutation p-value :math:`(1 + \\#\\{s_0 \\ge s\\}) / (1 + n_{perm})`.

Bootstrap intervals resample *perturbations* with replacement and recompute the score on the
pairs of distinct resampled perturbations.

``recipe="study"`` (:mod:`.recipe`) builds the reference as the layer study did: shifts of the
file's own values (``raw`` if present, else ``X``: raw counts in its data, not normalised),
genes ranked by :math:`|\\delta| / (\\sqrt{s_p^2/n_p + s_c^2/n_c} + 10^{-8})`, and profile
similarity = the cosine of the profiles' average ranks, not centred
(:func:`rank_cosine_similarity`; the study called it Spearman, which centres the ranks first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import sparse, stats

from .recipe import STUDY_T_EPS, Recipe, check_recipe
from .resample import rowwise_spearman

__all__ = [
    "PERTURBATION_METRICS",
    "PerturbationReference",
    "cosine_similarity",
    "embedding_similarity",
    "group_means",
    "null_z",
    "permutation_null",
    "permutation_p_value",
    "perturbation_reference",
    "rank_cosine_similarity",
    "rsa_bootstrap",
    "rsa_score",
    "shift_profiles",
    "spearman_similarity",
    "upper_triangle",
    "welch_t",
]

#: Metrics of the perturbation task, main score first.
PERTURBATION_METRICS = ("rsa_spearman", "rsa_p_value")

Centre = Literal["none", "control"]


def welch_t(a, b, eps: float = 0.0) -> np.ndarray:
    """Welch's t per column of ``a`` (cells x genes) against ``b``.

    :math:`t = (\\bar a - \\bar b) / (\\sqrt{s_a^2 / n_a + s_b^2 / n_b} + \\epsilon)` with
    unbiased variances :math:`s^2` (ddof 1; Welch 1947, *Biometrika* 34:28) and
    :math:`\\epsilon` = ``eps`` (0; the study used :math:`10^{-8}`). Dense or sparse input.
    A gene with no variance in either group and equal means gets 0.
    """
    mean_a, var_a, n_a = _moments(a)
    mean_b, var_b, n_b = _moments(b)
    if n_a < 2 or n_b < 2:
        raise ValueError(f"Welch's t needs at least 2 cells per group, got {n_a} and {n_b}")
    diff = mean_a - mean_b
    with np.errstate(invalid="ignore", divide="ignore"):
        t = diff / (np.sqrt(var_a / n_a + var_b / n_b) + eps)
    t[np.isnan(t)] = 0.0
    return t


def shift_profiles(
    x,
    labels: Sequence[str] | np.ndarray,
    control: str,
    min_cells: int = 5,
    n_top_genes: int = 500,
    eps: float = 0.0,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Zero-filled shift profiles of every perturbation with at least ``min_cells`` cells.

    ``x`` is log-normalised expression (cells x genes, dense or sparse) and ``labels`` the
    perturbation of each cell, ``control`` marking non-targeting cells. For perturbation *p*:
    shift :math:`\\delta_p = \\bar x_p - \\bar x_{ctrl}`, top genes :math:`T_p` = the
    ``n_top_genes`` largest :math:`|t|` (:func:`welch_t` of *p* against control, with
    ``eps``; ties go to the lower column, where the study's ``torch.topk`` leaves the order
    unspecified). The union
    :math:`U = \\cup_p T_p` indexes the profile columns, and profile :math:`p` is
    :math:`\\delta_p` on :math:`T_p` and 0 on :math:`U \\setminus T_p`.

    Returns the kept perturbations (sorted), profiles ``(P, |U|)`` and the column indices
    :math:`U` into ``x`` (ascending).
    """
    labels = np.asarray(labels, dtype=object)
    is_control = labels == control
    if is_control.sum() < 2:
        raise ValueError(f"need at least 2 control ({control!r}) cells, got {is_control.sum()}")
    names, counts = np.unique(labels[~is_control].astype(str), return_counts=True)
    kept = [str(n) for n, c in zip(names, counts) if c >= min_cells]
    x = x.tocsr() if sparse.issparse(x) else np.asarray(x)
    ctrl = x[is_control]
    ctrl_mean = _moments(ctrl)[0]
    shifts, tops = [], []
    for name in kept:
        cells = x[labels == name]
        t = np.abs(welch_t(cells, ctrl, eps))
        order = np.argsort(-t, kind="stable")
        tops.append(np.sort(order[: min(n_top_genes, t.size)]))
        shifts.append(_moments(cells)[0] - ctrl_mean)
    union = np.unique(np.concatenate(tops)) if tops else np.zeros(0, dtype=np.int64)
    profiles = np.zeros((len(kept), union.size))
    for row, (shift, top) in enumerate(zip(shifts, tops)):
        cols = np.searchsorted(union, top)
        profiles[row, cols] = shift[top]
    return kept, profiles, union


def spearman_similarity(profiles: np.ndarray) -> np.ndarray:
    """Spearman's :math:`\\rho` between every pair of rows (P x P; 0 where a row is constant)."""
    profiles = np.asarray(profiles, dtype=np.float64)
    if profiles.shape[1] == 0:
        return np.zeros((profiles.shape[0], profiles.shape[0]))
    ranks = stats.rankdata(np.asarray(profiles, dtype=np.float64), axis=1)
    return _pearson_rows(ranks)


def rank_cosine_similarity(profiles: np.ndarray) -> np.ndarray:
    """The study's profile similarity: cosine between every pair of rows' average ranks.

    Each row is ranked over its columns (ties: mean rank, from 1) and the ranks are compared
    by cosine *without centring*: :math:`r_p \\cdot r_q / (\\|r_p\\| \\|r_q\\|)`. Spearman's
    rho is the same cosine after subtracting each row's mean rank; uncentred, every pair
    scores above 0 (all ranks are positive), so this is not a correlation.
    """
    profiles = np.asarray(profiles, dtype=np.float64)
    if profiles.shape[1] == 0:
        return np.zeros((profiles.shape[0], profiles.shape[0]))
    return cosine_similarity(stats.rankdata(profiles, axis=1))


@dataclass(frozen=True)
class PerturbationReference:
    """The reference of one context: kept perturbations, their profiles and similarity."""

    perturbations: list[str]
    profiles: np.ndarray
    genes: np.ndarray
    similarity: np.ndarray


def perturbation_reference(
    x,
    labels: Sequence[str] | np.ndarray,
    control: str,
    gene_names: Sequence[str] | None = None,
    min_cells: int = 5,
    n_top_genes: int = 500,
    recipe: Recipe = "scstrata",
) -> PerturbationReference:
    """:func:`shift_profiles` and their similarity, for one context.

    ``scstrata``: ``x`` log-normalised, :func:`spearman_similarity`. ``study``: ``x`` as the
    study took it (the file's values, raw counts in its data), the t with
    :data:`~scstrata_scoring.recipe.STUDY_T_EPS`, :func:`rank_cosine_similarity`.
    """
    study = check_recipe(recipe) == "study"
    eps = STUDY_T_EPS if study else 0.0
    kept, profiles, union = shift_profiles(x, labels, control, min_cells, n_top_genes, eps)
    genes = np.asarray(gene_names)[union] if gene_names is not None else union
    similarity = rank_cosine_similarity(profiles) if study else spearman_similarity(profiles)
    return PerturbationReference(kept, profiles, genes, similarity)


def group_means(embedding, labels: Sequence[str] | np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Mean row of ``embedding`` per group, in the order of ``groups``: ``(len(groups), dim)``.

    ``embedding`` may be dense or sparse (cells x dims); the result is dense float64.
    """
    labels = np.asarray(labels, dtype=object)
    index = {group: i for i, group in enumerate(groups)}
    member = np.flatnonzero([label in index for label in labels])
    codes = np.array([index[label] for label in labels[member]], dtype=np.int64)
    counts = np.bincount(codes, minlength=len(groups))
    if (counts == 0).any():
        raise ValueError(f"group {list(groups)[int(np.argmin(counts))]!r} has no cells")
    return _means(_rows(embedding, member), codes, counts)


def cosine_similarity(vectors: np.ndarray) -> np.ndarray:
    """:math:`\\cos(u, v) = u \\cdot v / (\\|u\\| \\|v\\|)` for every pair of rows.

    Pairs involving a zero row get 0.
    """
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = v / safe[:, None]
    sim = unit @ unit.T
    sim[norms == 0, :] = 0.0
    sim[:, norms == 0] = 0.0
    return sim


def embedding_similarity(
    embedding,
    labels: Sequence[str] | np.ndarray,
    perturbations: Sequence[str],
    control: str | None = None,
    centre: Centre = "none",
) -> np.ndarray:
    """Cosine similarity of the mean embeddings of ``perturbations`` (P x P).

    ``centre="none"`` (the study's recipe) compares the means themselves; ``"control"``
    subtracts the control cells' mean embedding first, so that the comparison is between
    shifts, like the reference.
    """
    means = group_means(embedding, labels, perturbations)
    if centre == "control":
        if control is None:
            raise ValueError("centre='control' needs the control label")
        means = means - group_means(embedding, labels, [control])
    elif centre != "none":
        raise ValueError(f"centre must be 'none' or 'control', got {centre!r}")
    return cosine_similarity(means)


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    """The entries above the diagonal (pairs :math:`p < q`), row by row."""
    m = np.asarray(matrix)
    return m[np.triu_indices(m.shape[0], k=1)]


def rsa_score(embedding_similarity: np.ndarray, reference_similarity: np.ndarray) -> float:
    """Spearman's :math:`\\rho` between the upper triangles of two similarity matrices.

    NaN with fewer than 3 pairs or when either triangle is constant.
    """
    a = upper_triangle(embedding_similarity)
    b = upper_triangle(reference_similarity)
    if a.shape != b.shape:
        raise ValueError(
            f"matrices differ in size: {embedding_similarity.shape} vs {reference_similarity.shape}"
        )
    if a.size < 3:
        return float("nan")
    return float(rowwise_spearman(a[None, :], b[None, :])[0])


def rsa_bootstrap(
    embedding_similarity: np.ndarray, reference_similarity: np.ndarray, idx: np.ndarray
) -> np.ndarray:
    """:func:`rsa_score` on resampled perturbations, one value per row of ``idx`` ``(B, P)``.

    A resample keeps the pairs of positions :math:`a < b` whose perturbations differ
    (a perturbation drawn twice is not compared with itself).
    """
    emb = np.asarray(embedding_similarity)
    ref = np.asarray(reference_similarity)
    idx = np.atleast_2d(idx)
    ia, ib = np.triu_indices(idx.shape[1], k=1)
    out = np.full(idx.shape[0], np.nan)
    for row, draw in enumerate(idx):
        pa, pb = draw[ia], draw[ib]
        keep = pa != pb
        if keep.sum() >= 3:
            out[row] = rowwise_spearman(
                emb[pa[keep], pb[keep]][None, :], ref[pa[keep], pb[keep]][None, :]
            )[0]
    return out


def permutation_null(
    embedding,
    labels: Sequence[str] | np.ndarray,
    perturbations: Sequence[str],
    reference_similarity: np.ndarray,
    permutations: np.ndarray,
    control: str | None = None,
    centre: Centre = "none",
) -> np.ndarray:
    """Scores under shuffled perturbation labels, one per row of ``permutations``.

    Only cells of ``perturbations`` take part; row ``r`` of ``permutations`` (a permutation
    of ``range(n)`` over those cells, in obs order) reassigns their labels. Control cells keep
    theirs. Draw ``permutations`` once and reuse them for every layer, so nulls are paired.
    """
    labels = np.asarray(labels, dtype=object)
    groups = list(perturbations)
    index = {group: i for i, group in enumerate(groups)}
    member = np.flatnonzero([label in index for label in labels])
    codes = np.array([index[label] for label in labels[member]], dtype=np.int64)
    rows = _rows(embedding, member)
    counts = np.bincount(codes, minlength=len(groups))
    offset = None
    if centre == "control":
        offset = group_means(embedding, labels, [control])
    null = np.empty(len(permutations))
    for r, perm in enumerate(permutations):
        means = _means(rows, codes[perm], counts)
        if offset is not None:
            means = means - offset
        null[r] = rsa_score(cosine_similarity(means), reference_similarity)
    return null


def null_z(observed: float, null: np.ndarray) -> float:
    """:math:`z = (s - \\mathrm{mean}(s_0)) / \\mathrm{sd}(s_0)` (ddof 1; NaN if sd is 0)."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if null.size < 2 or not np.isfinite(observed):
        return float("nan")
    sd = null.std(ddof=1)
    return float((observed - null.mean()) / sd) if sd > 0 else float("nan")


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value :math:`(1 + \\#\\{s_0 \\ge s\\}) / (1 + n)`.

    Phipson & Smyth 2010 (*Stat. Appl. Genet. Mol. Biol.* 9:39): never 0.
    """
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if null.size == 0 or not np.isfinite(observed):
        return float("nan")
    return float((1 + np.sum(null >= observed)) / (1 + null.size))


def _rows(embedding, rows: np.ndarray):
    """The given rows of a dense or sparse matrix (dense as float64, sparse as CSR)."""
    if sparse.issparse(embedding):
        return sparse.csr_matrix(embedding)[rows]
    return np.asarray(embedding, dtype=np.float64)[rows]


def _means(rows, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of ``rows`` per code, through a sparse one-hot product (dense result)."""
    n = rows.shape[0]
    onehot = sparse.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(counts.size, n))
    sums = onehot @ rows
    sums = sums.toarray() if sparse.issparse(sums) else np.asarray(sums)
    return sums.astype(np.float64) / counts[:, None]


def _moments(x) -> tuple[np.ndarray, np.ndarray, int]:
    """Column means, unbiased variances (ddof 1; 0 for one row) and the number of rows."""
    n = x.shape[0]
    if sparse.issparse(x):
        x = x.astype(np.float64)
        mean = np.asarray(x.mean(axis=0)).ravel().astype(np.float64)
        sq = np.asarray(x.multiply(x).mean(axis=0)).ravel().astype(np.float64)
        var = np.clip(sq - mean**2, 0.0, None) * (n / (n - 1)) if n > 1 else np.zeros_like(mean)
        return mean, var, n
    arr = np.asarray(x, dtype=np.float64)
    var = arr.var(axis=0, ddof=1) if n > 1 else np.zeros(arr.shape[1])
    return arr.mean(axis=0), var, n


def _pearson_rows(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = centred / safe[:, None]
    sim = unit @ unit.T
    sim[norms == 0, :] = 0.0
    sim[:, norms == 0] = 0.0
    return sim
