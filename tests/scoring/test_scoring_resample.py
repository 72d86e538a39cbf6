import numpy as np
import pytest
from scipy import stats

from scstrata_scoring.resample import (
    bootstrap_indices,
    paired_difference,
    percentile_interval,
    rowwise_spearman,
)


def test_bootstrap_indices_are_seeded_and_in_range():
    a = bootstrap_indices(7, 50, seed=3)
    assert a.shape == (50, 7) and a.min() >= 0 and a.max() <= 6
    np.testing.assert_array_equal(a, bootstrap_indices(7, 50, seed=3))
    assert not np.array_equal(a, bootstrap_indices(7, 50, seed=4))
    assert bootstrap_indices(7, 0, seed=0).shape == (0, 7)


def test_percentile_interval_matches_numpy_quantiles_and_skips_nan():
    draws = np.arange(101, dtype=float)
    assert percentile_interval(draws) == pytest.approx((2.5, 97.5))
    assert percentile_interval(np.append(draws, np.nan)) == pytest.approx((2.5, 97.5))
    assert np.isnan(percentile_interval([1.0])).all()


def test_paired_difference_is_significant_only_when_interval_excludes_zero():
    base = np.linspace(0, 1, 200)
    gain, low, high, sig = paired_difference(0.9, base + 0.1, 0.8, base)
    assert gain == pytest.approx(0.1) and low == pytest.approx(0.1) and sig
    # Unpaired-looking noise around zero: the interval straddles 0.
    rng = np.random.default_rng(0)
    _, low, high, sig = paired_difference(0.5, rng.normal(0, 1, 200), 0.5, rng.normal(0, 1, 200))
    assert low < 0 < high and not sig


def test_rowwise_spearman_agrees_with_scipy_including_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, (4, 30)).astype(float)  # many ties
    b = a + rng.normal(0, 2, a.shape)
    expected = [stats.spearmanr(x, y).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(rowwise_spearman(a, b), expected)
    assert np.isnan(rowwise_spearman(np.ones((1, 5)), np.arange(5.0)[None]))[0]
