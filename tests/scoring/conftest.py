"""Shared fixtures: the real scFoundation gene list, a small trajectory and a small screen."""

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


@pytest.fixture(autouse=True)
def _private_client_cache(monkeypatch, tmp_path_factory):
    """Keep any result cache the client keeps out of the caller's home directory."""
    monkeypatch.setenv("SCSTRATA_CACHE_DIR", str(tmp_path_factory.mktemp("client-cache")))


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


@pytest.fixture(scope="session")
def perturb_sim(genes: list[str]) -> ad.AnnData:
    """A small screen: 10 perturbations x 20 cells + 40 controls, in each of 3 states."""
    from scstrata_scoring.simulate_perturbation import simulate_perturbation

    return simulate_perturbation(
        genes, n_perturbations=10, cells_per_perturbation=20, n_control=40, seed=0
    )
