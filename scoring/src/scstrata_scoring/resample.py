"""Resampling: seeded bootstrap draws, percentile intervals, paired gains, row-wise Spearman.

Every score of a sweep is computed on the full data and on ``n_boot`` resamples of it. The
resamples are drawn once per task and context and shared by every layer, model and baseline,
so two layers' bootstrap draws are *paired*: the gain of one over the other is computed on
the same resampled cells (or perturbations) in every draw.

Resamples of many cells are :class:`BootstrapDraws`: generated a batch at a time from their
seed, so memory stays bounded whatever the cells x draws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "BootstrapDraws",
    "bootstrap_indices",
    "paired_difference",
    "percentile_interval",
    "rowwise_spearman",
]

#: Coverage of every confidence interval the package reports.
CI_LEVEL = 0.95


def bootstrap_indices(n: int, n_boot: int, seed: int | np.random.Generator | None) -> np.ndarray:
    """``n_boot`` resamples of ``range(n)`` with replacement, as an int array ``(n_boot, n)``.

    Equal seeds give equal draws (``numpy.random.default_rng(seed)``).
    """
    if n < 1:
        raise ValueError(f"need at least one item to resample, got n={n}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


#: Indices (draws x items) per batch of :class:`BootstrapDraws`: 8 MB of int64, whatever n.
BATCH_INDICES = 1 << 20


@dataclass(frozen=True)
class BootstrapDraws:
    """``n_boot`` seeded resamples of ``range(n)`` with replacement, made a batch at a time.

    Draw ``i`` comes from its own generator, spawned from ``seed``
    (``numpy.random.SeedSequence(seed).spawn(n_boot)[i]``), so the draws do not depend on the
    batch size and every pass over them yields the same draws. A batch holds at most
    ``max(1, batch_indices // n)`` draws.
    """

    n: int
    n_boot: int
    seed: int | Sequence[int]
    batch_indices: int = BATCH_INDICES

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"need at least one item to resample, got n={self.n}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")

    def batches(self) -> Iterator[np.ndarray]:
        """``(draws, n)`` int arrays, in draw order; one empty batch when ``n_boot`` is 0."""
        seeds = np.random.SeedSequence(self.seed).spawn(self.n_boot)
        rows = max(1, self.batch_indices // self.n)
        if not seeds:
            yield np.zeros((0, self.n), dtype=np.int64)
        for start in range(0, self.n_boot, rows):
            chunk = seeds[start : start + rows]
            yield np.stack([np.random.default_rng(s).integers(0, self.n, self.n) for s in chunk])

    def map(
        self, statistic: Callable[[np.ndarray], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """``statistic(batch)`` over every batch, each key's values joined in draw order.

        ``statistic`` maps ``(draws, n)`` indices to ``{name: one value per draw}``.
        """
        parts = [statistic(idx) for idx in self.batches()]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def percentile_interval(draws: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval: the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles.

    Non-finite draws (a resample where the statistic is undefined) are left out; with fewer
    than two finite draws the interval is ``(nan, nan)``.
    """
    values = np.asarray(draws, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def paired_difference(
    value_a: float, draws_a: np.ndarray, value_b: float, draws_b: np.ndarray
) -> tuple[float, float, float, bool]:
    """Difference ``a - b`` with a paired percentile interval; significant if it excludes 0.

    ``draws_a[i]`` and ``draws_b[i]`` must come from the same resample ``i``. Returns
    ``(difference, ci_low, ci_high, significant)``; ``significant`` is False when the interval
    is undefined.
    """
    diff = np.asarray(draws_a, dtype=np.float64) - np.asarray(draws_b, dtype=np.float64)
    low, high = percentile_interval(diff)
    significant = bool(np.isfinite(low) and (low > 0.0 or high < 0.0))
    return float(value_a - value_b), low, high, significant


def rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho between ``a[i]`` and ``b[i]`` for every row ``i`` (ties: mean ranks).

    :math:`\\rho_i` is the Pearson correlation of the ranks of row *i* of ``a`` and of ``b``
    (Spearman 1904). Rows where either side is constant give NaN.
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    ra = stats.rankdata(a, axis=1)
    rb = stats.rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(axis=1) / denom
    rho[~(denom > 1e-12)] = np.nan
    return rho
