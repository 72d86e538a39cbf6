"""Shared fixtures: a tiny scFoundation checkpoint in the official layout, and cells."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).parent))  # for reference_scfoundation


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from scstrata_service.families.scfoundation.fabricate import fabricate_checkpoint

    return fabricate_checkpoint(tmp_path_factory.mktemp("scf"), hidden=32, depth=3, heads=4)


@pytest.fixture(scope="session")
def vocabulary(tiny_checkpoint) -> list[str]:
    from scstrata_service.families.scfoundation.checkpoint import load_vocabulary

    return load_vocabulary(tiny_checkpoint)


def make_cells(vocabulary: list[str], n_cells: int = 12, n_genes: int = 400, seed: int = 0):
    """Raw counts over a shuffled vocabulary subset plus two unknown genes; uneven depths."""
    rng = np.random.default_rng(seed)
    genes = list(rng.choice(vocabulary, n_genes, replace=False)) + ["NOT_A_GENE", "ALSO_NOT"]
    density = rng.uniform(0.05, 0.5, size=(n_cells, 1))
    dense = rng.poisson(3.0, (n_cells, len(genes))) * (rng.random((n_cells, len(genes))) < density)
    dense[:, 0] += 2  # every cell has a known gene and a total above 1 (S token > 0)
    return sp.csr_matrix(dense.astype(np.float64)), genes


@pytest.fixture(scope="session")
def service_url(tiny_checkpoint) -> str:
    """One real server for the session, serving the tiny checkpoint as 'scf'."""
    from server import running_service

    with running_service([f"scf=scfoundation:{tiny_checkpoint.parent}"]) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_backend(tiny_checkpoint):
    from scstrata_service.families.scfoundation.backend import ScFoundationBackend

    return ScFoundationBackend.load("scf", tiny_checkpoint)


def embed_item(counts, genes, **fields) -> dict:
    """A request item exactly as docs/api.md describes it."""
    counts = sp.csr_matrix(counts)
    return {
        "model": "scf",
        "genes": list(genes),
        "cells": {
            "data": counts.data.tolist(),
            "indices": counts.indices.tolist(),
            "indptr": counts.indptr.tolist(),
            "shape": list(counts.shape),
        },
        **fields,
    }
