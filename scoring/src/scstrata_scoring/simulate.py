"""Simulated differentiation trajectories with a known pseudotime.

The simulator exists so that the trajectory score can be checked against ground truth, and so
that a demo can run end to end without downloading a data set. It is deliberately simple: one
linear trajectory, smooth gene programs along it, and overdispersed count noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

__all__ = ["simulate_trajectory"]

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

    Returns
    -------
    AnnData with

    * ``X``: raw counts, :class:`scipy.sparse.csr_matrix` of ``float32`` integers;
    * ``obs["true_pseudotime"]``: latent pseudotime in [0, 1];
    * ``obs["time"]``: observed time point, integers ``0..n_timepoints-1``;
    * ``obs["total_counts"]``: counts per cell;
    * ``var["program"]``: ``"housekeeping"``, ``"rising"``, ``"falling"``, ``"peak<p>"`` or
      ``"unexpressed"``;
    * ``uns["simulation"]``: the parameters above.
    """
    genes = [str(g) for g in genes]
    n_genes = len(genes)
    if n_genes == 0:
        raise ValueError("genes: need at least one gene symbol")
    if n_cells < 1 or n_timepoints < 1 or n_programs < 0:
        raise ValueError("n_cells and n_timepoints must be >= 1 and n_programs >= 0")
    rng = np.random.default_rng(seed)
    n_expr = min(n_expressed, n_genes)

    pseudotime = rng.uniform(0.0, 1.0, n_cells)
    noisy = pseudotime + rng.normal(0.0, time_noise, n_cells)
    time = np.clip(np.floor(noisy * n_timepoints), 0, n_timepoints - 1).astype(np.int64)

    # Sorted so that the expressed block maps to ascending column indices of the full matrix.
    expressed = np.sort(rng.choice(n_genes, size=n_expr, replace=False))
    program, shape = _programs(rng, n_expr, n_programs, pseudotime)

    # Baselines spread over ~2 orders of magnitude, as real mean expression does.
    log_baseline = rng.normal(0.0, 1.0, n_expr)
    fold = rng.uniform(1.0, max_log2_fold_change, n_expr)
    fold[program == "housekeeping"] = 0.0
    log_rate = log_baseline[None, :] + np.log(2.0) * fold[None, :] * shape
    rate = np.exp(log_rate - log_rate.max(axis=1, keepdims=True))
    proportions = rate / rate.sum(axis=1, keepdims=True)

    library = mean_library_size * np.exp(rng.normal(0.0, library_size_sd, n_cells))
    mu = proportions * library[:, None]
    gamma = rng.gamma(1.0 / dispersion, dispersion, size=mu.shape)
    counts = rng.poisson(mu * gamma).astype(np.float32)

    block = sparse.csr_matrix(counts)
    x = sparse.csr_matrix(
        (block.data, expressed[block.indices], block.indptr), shape=(n_cells, n_genes)
    )

    var_program = np.full(n_genes, "unexpressed", dtype=object)
    var_program[expressed] = program
    obs = pd.DataFrame(
        {
            "true_pseudotime": pseudotime,
            "time": time,
            "total_counts": np.asarray(x.sum(axis=1)).ravel(),
        },
        index=pd.Index([f"cell{i}" for i in range(n_cells)]),
    )
    var = pd.DataFrame({"program": pd.Categorical(var_program)}, index=pd.Index(genes))
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
    }
    return adata


def _programs(
    rng: np.random.Generator, n_expr: int, n_programs: int, pseudotime: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Assign each expressed gene a program; return labels and shapes f_g(t_c) in [0, 1]."""
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
    labels = labels[rng.permutation(n_expr)]

    t = pseudotime[:, None]
    shape = np.zeros((pseudotime.size, n_expr))
    for kind, sign in (("rising", 1.0), ("falling", -1.0)):
        idx = np.flatnonzero(labels == kind)
        # Steps sit inside the trajectory so every one is visible in the data.
        midpoint = rng.uniform(0.2, 0.8, idx.size)
        width = rng.uniform(0.05, 0.15, idx.size)
        shape[:, idx] = 1.0 / (1.0 + np.exp(-sign * (t - midpoint) / width))
    for p in range(n_programs):
        idx = np.flatnonzero(labels == f"peak{p}")
        centre = (p + 0.5) / n_programs
        width = rng.uniform(0.6, 1.0, idx.size) * 0.5 / n_programs
        shape[:, idx] = np.exp(-0.5 * ((t - centre) / width) ** 2)
    return labels.astype(str), shape
