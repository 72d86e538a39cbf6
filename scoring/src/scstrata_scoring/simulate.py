"""Simulated differentiation trajectories with a known pseudotime.

The simulator exists so that the trajectory score can be checked against ground truth, and so
that a demo can run end to end without downloading a data set. It is deliberately simple: one
linear trajectory (or a trunk splitting into two branches), smooth gene programs along it, and
overdispersed count noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

__all__ = ["nb_counts", "simulate_trajectory"]

# Share of the expressed genes given to each kind of program. The rest follow the transient
# ("peak") programs. Housekeeping genes dominate real libraries, so they get the largest share.
_HOUSEKEEPING_SHARE = 0.4
_RISING_SHARE = 0.15
_FALLING_SHARE = 0.15


def simulate_trajectory(
    genes: Sequence[str],
    n_cells: int = 600,
    n_timepoints: int = 4,
    n_programs: int = 4,
    seed: int = 0,
    *,
    n_expressed: int = 2000,
    time_noise: float = 0.08,
    mean_library_size: float = 5000.0,
    library_size_sd: float = 0.3,
    dispersion: float = 0.2,
    max_log2_fold_change: float = 4.0,
    topology: Literal["linear", "branching"] = "linear",
    branch_point: float = 0.4,
) -> ad.AnnData:
    """Simulate raw counts of cells along one differentiation trajectory.

    Each cell gets a latent pseudotime :math:`t_c \\sim U(0, 1)`. A random subset of
    ``n_expressed`` genes is expressed; every other gene stays at zero, which keeps the matrix
    sparse while ``var_names`` still cover all of ``genes`` (a model maps genes by name, so it
    must see its whole vocabulary). Expressed genes fall into programs:

    * housekeeping: constant along pseudotime;
    * rising / falling: a logistic step up / down at a gene-specific point of pseudotime;
    * ``n_programs`` transient programs: a Gaussian bump peaking at evenly spaced points
      ``(p + 0.5) / n_programs``, ``p = 0..n_programs-1``.

    The expected count of gene *g* in cell *c* is

    .. math::
        \\mu_{gc} = L_c \\, \\frac{b_g \\, 2^{a_g f_g(t_c)}}{\\sum_h b_h \\, 2^{a_h f_h(t_c)}},

    with log-normal baseline :math:`b_g`, log2 fold change :math:`a_g \\le`
    ``max_log2_fold_change``, program shape :math:`f_g \\in [0, 1]` and log-normal library size
    :math:`L_c` (median ``mean_library_size``, log-sd ``library_size_sd``). Counts are negative
    binomial, drawn as Poisson-gamma: :math:`x_{gc} \\sim \\mathrm{Poisson}(\\mu_{gc}\\lambda)`,
    :math:`\\lambda \\sim \\Gamma(1/\\phi, \\phi)` with dispersion :math:`\\phi` = ``dispersion``.

    Observed time points imitate sampling days that overlap in pseudotime: the pseudotime plus
    Gaussian noise (sd ``time_noise``) is cut into ``n_timepoints`` equal bins of [0, 1].

    Cells are in random order (pseudotime is drawn independently per cell), so "the first cell
    at the earliest time point" is an arbitrary early cell, not the earliest one.

    ``topology="branching"`` splits the trajectory at pseudotime ``branch_point`` into
    branches ``"A"`` and ``"B"`` (each cell past it joins one at random). Rising genes and
    transient programs peaking after the branch point are each given to one branch; in cells
    of the other branch they stay at their level at the branch point,
    :math:`f_g(\\min(t_c, b))`. Housekeeping and falling genes are shared. The linear data of a
    seed are unchanged by this option's existence: the branching draws use their own stream.

    Parameters
    ----------
    genes
        Gene symbols; they become ``var_names`` in the given order.
    n_cells
        Number of cells.
    n_timepoints
        Number of observed time points.
    n_programs
        Number of transient (peaking) programs.
    seed
        Seed of the :class:`numpy.random.Generator`; equal seeds give equal data.
    n_expressed
        Number of genes with non-zero expression (clipped to ``len(genes)``).
    time_noise
        Standard deviation of the pseudotime noise before binning into time points.
    mean_library_size
        Median total counts per cell.
    library_size_sd
        Standard deviation of the log library size.
    dispersion
        Negative binomial dispersion :math:`\\phi` (variance :math:`\\mu + \\phi\\mu^2`).
    max_log2_fold_change
        Largest log2 fold change of a program gene between its low and high state.
    topology
        ``"linear"`` or ``"branching"``.
    branch_point
        Pseudotime at which the branches split (``topology="branching"`` only).

    Returns
    -------
    AnnData with

    * ``X``: raw counts, :class:`scipy.sparse.csr_matrix` of ``float32`` integers;
    * ``obs["true_pseudotime"]``: latent pseudotime in [0, 1];
    * ``obs["time"]``: observed time point, integers ``0..n_timepoints-1``;
    * ``obs["branch"]``: ``"trunk"``, ``"A"`` or ``"B"`` (all ``"trunk"`` when linear);
    * ``obs["total_counts"]``: counts per cell;
    * ``var["program"]``: ``"housekeeping"``, ``"rising"``, ``"falling"``, ``"peak<p>"`` or
      ``"unexpressed"``; ``var["branch"]``: ``"A"``, ``"B"`` or ``""`` (shared);
    * ``uns["simulation"]``: the parameters above.
    """
    genes = [str(g) for g in genes]
    n_genes = len(genes)
    if n_genes == 0:
        raise ValueError("genes: need at least one gene symbol")
    if n_cells < 1 or n_timepoints < 1 or n_programs < 0:
        raise ValueError("n_cells and n_timepoints must be >= 1 and n_programs >= 0")
    if topology not in ("linear", "branching"):
        raise ValueError(f"topology must be 'linear' or 'branching', got {topology!r}")
    if not 0.0 < branch_point < 1.0:
        raise ValueError(f"branch_point must lie in (0, 1), got {branch_point}")
    rng = np.random.default_rng(seed)
    n_expr = min(n_expressed, n_genes)

    pseudotime = rng.uniform(0.0, 1.0, n_cells)
    noisy = pseudotime + rng.normal(0.0, time_noise, n_cells)
    time = np.clip(np.floor(noisy * n_timepoints), 0, n_timepoints - 1).astype(np.int64)

    # Sorted so that the expressed block maps to ascending column indices of the full matrix.
    expressed = np.sort(rng.choice(n_genes, size=n_expr, replace=False))
    program, params = _program_params(rng, n_expr, n_programs)
    shape = _program_shape(program, params, pseudotime)
    cell_branch = np.full(n_cells, "trunk", dtype=object)
    gene_branch = np.full(n_expr, "", dtype=object)
    if topology == "branching":
        # A stream of its own, so that the linear data of a seed stay what they were.
        branch_rng = np.random.default_rng([seed, 1])
        past = pseudotime > branch_point
        cell_branch[past] = np.where(branch_rng.random(int(past.sum())) < 0.5, "A", "B")
        late = (program == "rising") | np.isin(program, _late_peaks(n_programs, branch_point))
        gene_branch[late] = np.where(branch_rng.random(int(late.sum())) < 0.5, "A", "B")
        frozen = _program_shape(program, params, np.minimum(pseudotime, branch_point))
        for name in ("A", "B"):
            cells = past & (cell_branch != name)
            genes_of = gene_branch == name
            shape[np.ix_(cells, genes_of)] = frozen[np.ix_(cells, genes_of)]

    # Baselines spread over ~2 orders of magnitude, as real mean expression does.
    log_baseline = rng.normal(0.0, 1.0, n_expr)
    fold = rng.uniform(1.0, max_log2_fold_change, n_expr)
    fold[program == "housekeeping"] = 0.0
    log_rate = log_baseline[None, :] + np.log(2.0) * fold[None, :] * shape
    rate = np.exp(log_rate - log_rate.max(axis=1, keepdims=True))
    proportions = rate / rate.sum(axis=1, keepdims=True)

    library = mean_library_size * np.exp(rng.normal(0.0, library_size_sd, n_cells))
    counts = nb_counts(rng, proportions * library[:, None], dispersion)

    block = sparse.csr_matrix(counts)
    x = sparse.csr_matrix(
        (block.data, expressed[block.indices], block.indptr), shape=(n_cells, n_genes)
    )

    var_program = np.full(n_genes, "unexpressed", dtype=object)
    var_program[expressed] = program
    var_branch = np.full(n_genes, "", dtype=object)
    var_branch[expressed] = gene_branch
    obs = pd.DataFrame(
        {
            "true_pseudotime": pseudotime,
            "time": time,
            "branch": pd.Categorical(cell_branch.astype(str), categories=["trunk", "A", "B"]),
            "total_counts": np.asarray(x.sum(axis=1)).ravel(),
        },
        index=pd.Index([f"cell{i}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(
        {"program": pd.Categorical(var_program), "branch": var_branch.astype(str)},
        index=pd.Index(genes),
    )
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.uns["simulation"] = {
        "n_cells": n_cells,
        "n_timepoints": n_timepoints,
        "n_programs": n_programs,
        "seed": seed,
        "n_expressed": n_expr,
        "time_noise": time_noise,
        "mean_library_size": mean_library_size,
        "library_size_sd": library_size_sd,
        "dispersion": dispersion,
        "max_log2_fold_change": max_log2_fold_change,
        "topology": topology,
        "branch_point": branch_point,
    }
    return adata


def nb_counts(rng: np.random.Generator, mu: np.ndarray, dispersion: float) -> np.ndarray:
    """Negative binomial counts of mean ``mu``, variance ``mu + dispersion * mu**2``, as float32.

    Drawn as a Poisson-gamma mixture: :math:`x \\sim \\mathrm{Poisson}(\\mu\\lambda)`,
    :math:`\\lambda \\sim \\Gamma(1/\\phi, \\phi)`.
    """
    gamma = rng.gamma(1.0 / dispersion, dispersion, size=mu.shape)
    return rng.poisson(mu * gamma).astype(np.float32)


def _late_peaks(n_programs: int, branch_point: float) -> list[str]:
    """Transient programs peaking after the branch point."""
    return [f"peak{p}" for p in range(n_programs) if (p + 0.5) / n_programs > branch_point]


def _program_params(
    rng: np.random.Generator, n_expr: int, n_programs: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Assign each expressed gene a program and draw its shape parameters."""
    n_house = round(_HOUSEKEEPING_SHARE * n_expr)
    n_rise = round(_RISING_SHARE * n_expr)
    n_fall = round(_FALLING_SHARE * n_expr)
    n_peak = n_expr - n_house - n_rise - n_fall
    if n_programs == 0:
        # No transient programs: give their genes to housekeeping.
        n_house += n_peak
        n_peak = 0
    labels = np.array(
        ["housekeeping"] * n_house
        + ["rising"] * n_rise
        + ["falling"] * n_fall
        + [f"peak{i % max(n_programs, 1)}" for i in range(n_peak)],
        dtype=object,
    )
    # Shuffle so that program membership is unrelated to the gene's position in the vocabulary.
    labels = labels[rng.permutation(n_expr)].astype(str)

    params: dict[str, np.ndarray] = {"n_programs": np.array(n_programs)}
    for kind in ("rising", "falling"):
        size = int((labels == kind).sum())
        # Steps sit inside the trajectory so every one is visible in the data.
        params[f"{kind}_midpoint"] = rng.uniform(0.2, 0.8, size)
        params[f"{kind}_width"] = rng.uniform(0.05, 0.15, size)
    for p in range(n_programs):
        size = int((labels == f"peak{p}").sum())
        params[f"peak{p}_width"] = rng.uniform(0.6, 1.0, size) * 0.5 / n_programs
    return labels, params


def _program_shape(
    labels: np.ndarray, params: dict[str, np.ndarray], pseudotime: np.ndarray
) -> np.ndarray:
    """Shapes f_g(t_c) in [0, 1], cells x expressed genes (housekeeping stays 0)."""
    t = pseudotime[:, None]
    shape = np.zeros((pseudotime.size, labels.size))
    for kind, sign in (("rising", 1.0), ("falling", -1.0)):
        idx = np.flatnonzero(labels == kind)
        midpoint, width = params[f"{kind}_midpoint"], params[f"{kind}_width"]
        shape[:, idx] = 1.0 / (1.0 + np.exp(-sign * (t - midpoint) / width))
    n_programs = int(params["n_programs"])
    for p in range(n_programs):
        idx = np.flatnonzero(labels == f"peak{p}")
        centre = (p + 0.5) / n_programs
        shape[:, idx] = np.exp(-0.5 * ((t - centre) / params[f"peak{p}_width"]) ** 2)
    return shape
