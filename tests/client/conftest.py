"""Shared helpers for the client tests. Nothing here starts a server."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp


def fake_result(item: dict[str, Any], layer_keys: list[int], dim: int = 3) -> dict[str, Any]:
    """A well-formed result for one request item, as api.md describes it.

    Row i of layer k is ``[sum of cell i's counts, k, 0, ...]``: a test can tell whether every
    cell came back, in order, under the right layer.
    """
    cells = item["cells"]
    matrix = sp.csr_matrix(
        (cells["data"], cells["indices"], cells["indptr"]), shape=tuple(cells["shape"])
    )
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    rows = np.zeros((matrix.shape[0], dim))
    rows[:, 0] = sums
    layers = {}
    for k in layer_keys:
        rows[:, 1] = k
        layers[str(k)] = rows.tolist()
    return {
        "model": item["model"],
        "pooling": item["pooling"],
        "n_cells": matrix.shape[0],
        "dim": dim,
        "layers": layers,
        "n_unmapped_genes": 1,
        "unmapped_genes": ["FOO"],
    }


@pytest.fixture(autouse=True)
def _isolated_client_environment(tmp_path_factory, monkeypatch):
    """Every test gets its own empty result cache and no token from the caller's shell."""
    monkeypatch.setenv("SCSTRATA_CACHE_DIR", str(tmp_path_factory.mktemp("scstrata-cache")))
    monkeypatch.delenv("SCSTRATA_TOKEN", raising=False)
    monkeypatch.delenv("SCSTRATA_URL", raising=False)


@pytest.fixture
def counts() -> np.ndarray:
    """7 cells x 4 genes of small integer counts, no all-zero row."""
    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, size=(7, 4)).astype(np.float64)
    X[:, 0] += 1
    return X


@pytest.fixture
def gene_names() -> list[str]:
    return ["A1BG", "TP53", "GAPDH", "ACTB"]


@pytest.fixture
def make_result():
    """``fake_result`` as a fixture, so tests need not import conftest by name."""
    return fake_result
