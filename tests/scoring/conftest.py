"""Shared fixtures: the real scFoundation gene list and one small simulated data set."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from scstrata_scoring.cli import read_genes
from scstrata_scoring.simulate import simulate_trajectory

# the copy of scFoundation's gene list the project carries (also in ../shared/data)
GENE_TSV = (
    Path(__file__).resolve().parents[2]
    / "service/src/scstrata_service/data/OS_scRNA_gene_index.19264.tsv"
)


@pytest.fixture(scope="session")
def gene_tsv() -> Path:
    return GENE_TSV


@pytest.fixture(scope="session")
def genes() -> list[str]:
    return read_genes(GENE_TSV)


@pytest.fixture(scope="session")
def sim400(genes: list[str]) -> ad.AnnData:
    return simulate_trajectory(genes, n_cells=400, seed=0)


def _pca_baseline(adata: ad.AnnData, n_top_genes: int = 1000, n_pcs: int = 20) -> np.ndarray:
    """A parameter-free "layer": PCA of scaled log-normalised HVGs.

    Deliberately not the reference's own recipe (fewer genes and PCs, scaled), so that a high
    score says the reference is robust to reasonable choices, not that a pipeline equals itself.
    """
    norm = adata.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    sc.pp.highly_variable_genes(norm, n_top_genes=n_top_genes)
    norm = norm[:, norm.var["highly_variable"].to_numpy()].copy()
    norm.X = norm.X.toarray()  # scaling centres the data, so it is dense anyway
    sc.pp.scale(norm)
    sc.pp.pca(norm, n_comps=n_pcs, random_state=0)
    return np.asarray(norm.obsm["X_pca"])


@pytest.fixture(scope="session")
def pca_baseline():
    """The function computing the PCA baseline (a fixture, so tests need not import conftest)."""
    return _pca_baseline
