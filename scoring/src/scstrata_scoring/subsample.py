"""Scoring on a seeded subsample of cells, for data sets with more cells than fit.

Every trajectory score needs a kNN graph, a diffusion map and DPT of each representation on
the same cells. Their time and memory grow about linearly with the cells (bench/RESULTS.md),
but a sweep of many layers over millions of cells may still not fit: then it scores a
uniform random subset of cells, drawn once from a seed and shared by every layer, model and
baseline (so layers stay comparable). The score table says how many cells were scored
(``n_cells``) and from which seed (``subsample_seed``, empty when all cells were scored).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

__all__ = ["CellSample", "sample_cells", "subsample_note", "take_rows"]

# Seeds of different draws of one sweep are kept apart by a second word (bootstrap: 0).
_STREAM = 2


@dataclass(frozen=True)
class CellSample:
    """Which cells are scored: ``cells`` (sorted positions in obs order; None = all)."""

    cells: np.ndarray | None
    n_total: int
    seed: int | None

    @property
    def n_cells(self) -> int:
        return self.n_total if self.cells is None else int(self.cells.size)


def sample_cells(n_total: int, size: int | None, seed: int = 0) -> CellSample:
    """``size`` of ``n_total`` cells without replacement, seeded; all cells when ``size`` is
    None or at least ``n_total``. Cells keep their obs order."""
    if size is None or size >= n_total:
        return CellSample(None, n_total, None)
    if size < 3:
        raise ValueError(f"subsample: need at least 3 cells to score, got {size}")
    rng = np.random.default_rng([seed, _STREAM])
    return CellSample(np.sort(rng.choice(n_total, size=size, replace=False)), n_total, seed)


def take_rows(array, sample: CellSample):
    """The sampled rows of a numpy array, sparse matrix, AnnData or zarr array.

    A zarr array is read for those rows only (``oindex``), so a layer stored on disk is
    never loaded whole.
    """
    if sample.cells is None:
        return array
    if hasattr(array, "oindex"):  # zarr: orthogonal selection reads only these rows
        return np.asarray(array.oindex[sample.cells])
    if sparse.issparse(array):
        return sparse.csr_matrix(array)[sample.cells]
    if hasattr(array, "obs_names"):  # AnnData
        return array[sample.cells].copy()
    return np.asarray(array)[sample.cells]


def subsample_note(scores: pd.DataFrame) -> str | None:
    """One sentence for a report when the table was scored on a subsample, else None."""
    if "subsample_seed" not in scores or scores["subsample_seed"].isna().all():
        return None
    cells = sorted(int(n) for n in scores["n_cells"].dropna().unique())
    seeds = sorted(int(s) for s in scores["subsample_seed"].dropna().unique())
    return (
        f"Scored on a seeded random subsample of {', '.join(f'{n:,}' for n in cells)} cells "
        f"(seed {', '.join(map(str, seeds))}), the same cells for every layer and baseline."
    )
