import numpy as np
import pytest

from scstrata_scoring.proxies import effective_rank, matrix_entropy


def test_effective_rank_and_matrix_entropy_on_a_hand_made_case():
    # Centred already; singular values sqrt(2)*1 and sqrt(2)*2.
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    p = np.array([1.0, 2.0]) / 3.0
    assert effective_rank(x) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    lam = np.array([1.0, 4.0]) / 5.0  # squared singular values, trace-normalised
    assert matrix_entropy(x) == pytest.approx(-(lam * np.log(lam)).sum())
    # The covariance route gives the same eigenvalues.
    cov = np.cov(x.T, bias=True)
    eig = np.linalg.eigvalsh(cov / np.trace(cov))
    assert matrix_entropy(x) == pytest.approx(-(eig * np.log(eig)).sum())


def test_proxies_ignore_the_mean_and_count_equal_directions():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(200, 5)))  # 5 orthonormal columns, equal spread
    x = q - q.mean(axis=0)
    assert effective_rank(x + 100.0) == pytest.approx(effective_rank(x))
    assert 4.5 < effective_rank(x) <= 5.0
    assert matrix_entropy(x) == pytest.approx(np.log(5), abs=0.05)
    one_direction = np.outer(rng.normal(size=50), rng.normal(size=8))
    assert effective_rank(one_direction) == pytest.approx(1.0)
    assert matrix_entropy(one_direction) == pytest.approx(0.0, abs=1e-9)


def test_wide_embeddings_take_the_gram_route_with_the_same_result():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 300))
    sigma = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    p = sigma / sigma.sum()
    assert effective_rank(x) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert np.isnan(effective_rank(np.ones((5, 3))))
