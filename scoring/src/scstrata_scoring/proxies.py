"""Label-free layer proxies: how many directions does a layer's embedding use?

Both are functions of the singular values :math:`\\sigma_1 \\ge \\dots \\ge \\sigma_r` of the
*centred* embedding :math:`X_c` (cells x dims, each column minus its mean). They need no
labels, so they can be computed for any layer; a sweep reports them beside the task scores
with their rank correlation to the task score across layers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PROXY_METRICS", "effective_rank", "matrix_entropy"]

#: Proxy metrics reported per layer.
PROXY_METRICS = ("effective_rank", "matrix_entropy")


def effective_rank(embedding: np.ndarray) -> float:
    """Effective rank (Roy & Vetterli 2007, *EUSIPCO*): :math:`\\exp H(p)`.

    :math:`p_i = \\sigma_i / \\sum_j \\sigma_j` are the normalised singular values of the
    centred embedding and :math:`H(p) = -\\sum_i p_i \\log p_i` (natural log, :math:`0 \\log 0
    = 0`). It lies in :math:`[1, \\mathrm{rank}]`: 1 for a single direction, ``d`` for ``d``
    directions of equal spread. NaN for a constant embedding.
    """
    sigma = _singular_values(embedding)
    total = sigma.sum()
    if not total > 0:
        return float("nan")
    return float(np.exp(_entropy(sigma / total)))


def matrix_entropy(embedding: np.ndarray) -> float:
    """Von Neumann entropy of the trace-normalised covariance: :math:`-\\sum_i \\lambda_i \\log
    \\lambda_i`.

    :math:`\\lambda_i` are the eigenvalues of :math:`C / \\mathrm{tr}(C)` with covariance
    :math:`C = X_c^\\top X_c / n`; equivalently :math:`\\lambda_i = \\sigma_i^2 / \\sum_j
    \\sigma_j^2`. Natural log; 0 for a single direction, :math:`\\log d` for ``d`` directions of
    equal variance. NaN for a constant embedding.
    """
    sigma = _singular_values(embedding)
    power = sigma**2
    total = power.sum()
    if not total > 0:
        return float("nan")
    return float(_entropy(power / total))


def _singular_values(embedding: np.ndarray) -> np.ndarray:
    x = np.asarray(embedding, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"embedding must be 2-D with at least 2 rows, got shape {x.shape}")
    centred = x - x.mean(axis=0, keepdims=True)
    # For wide embeddings (dims > cells) the eigenvalues of the smaller Gram matrix X X^T
    # (the squared singular values) are cheaper than an SVD.
    if centred.shape[1] > centred.shape[0]:
        eig = np.linalg.eigvalsh(centred @ centred.T)
        sigma = np.sqrt(np.clip(eig, 0.0, None))[::-1]
    else:
        sigma = np.linalg.svd(centred, compute_uv=False)
    # Rounding leaves tiny non-zero values where the rank is lower; they are zeros.
    if sigma.size and sigma[0] > 0:
        sigma = np.where(sigma > 1e-10 * sigma[0], sigma, 0.0)
    return sigma


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())
