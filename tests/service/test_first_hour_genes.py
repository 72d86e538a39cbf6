"""Genes the model does not know are never dropped silently (issue 17, point 1).

The reply reports the share of the request's gene names and of each cell's counts that
reached the model; below ``min_mapped_fraction`` of the counts (default 0.5) the request is
refused with a 400 naming the likely cause and the fix. A gene subset (HVGs) has all of its
counts on known genes; it is refused for carrying fewer than ``min_known_genes`` of the model's
genes (the server's default 5,000; the tests' servers take any subset: conftest.py).
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from scstrata_service.admission import admit
from scstrata_service.coverage import DEFAULT_MIN_MAPPED_FRACTION, genes_required, measure
from scstrata_service.registry import Registry
from scstrata_service.schemas import Refused
from scstrata_service.settings import DEFAULT_MIN_KNOWN_GENES, Settings

from helpers import embed_item, make_cells


def known_cells(vocabulary, **kwargs):
    """make_cells without its two unknown genes."""
    counts, genes = make_cells(vocabulary, **kwargs)
    return sp.csr_matrix(counts[:, :-2]), list(genes[:-2])


def _post(url: str, item: dict) -> httpx.Response:
    return httpx.post(f"{url}/embed", json={"items": [item]}, timeout=120)


def test_the_default_threshold_is_half_of_the_counts():
    assert DEFAULT_MIN_MAPPED_FRACTION == 0.5


def test_mouse_case_symbols_are_refused_naming_the_cause(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=3, n_genes=200)
    mouse = [g[:1] + g[1:].lower() for g in genes]  # TP53 -> Tp53
    reply = _post(service_url, embed_item(counts, mouse, layers=[-1]))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error.startswith("genes: only ")
    assert "mouse symbols" in error and "human orthologues" in error
    assert "min_mapped_fraction" in error


def test_ensembl_ids_for_a_symbol_model_are_refused_naming_the_fix(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=3, n_genes=200)
    ensembl = [f"ENSG{i:011d}" for i in range(len(genes))]
    reply = _post(service_url, embed_item(counts, ensembl, layers=[-1]))
    assert reply.status_code == 400, reply.text
    assert "look like Ensembl ids" in reply.json()["error"]


def test_above_the_threshold_the_reply_reports_what_reached_the_model(service_url, vocabulary):
    counts, genes = known_cells(vocabulary, n_cells=4, n_genes=200, seed=3)
    genes[5] = "NOT_A_GENE_1"  # one column of 200 the model cannot see
    dense = counts.toarray()
    expected = 1 - dense[:, 5] / dense.sum(axis=1)
    reply = _post(service_url, embed_item(counts, genes, layers=[-1]))
    assert reply.status_code == 200, reply.text
    (result,) = reply.json()
    assert result["n_unmapped_genes"] == 1 and result["unmapped_genes"] == ["NOT_A_GENE_1"]
    assert result["mapped_gene_fraction"] == 199 / 200
    np.testing.assert_allclose(result["mapped_count_fraction"], expected, rtol=1e-6)


def test_a_lower_threshold_embeds_what_matched(service_url, vocabulary):
    counts, genes = known_cells(vocabulary, n_cells=3, n_genes=200)
    genes = [f"X{i}" for i in range(100)] + genes[100:]
    refused = _post(service_url, embed_item(counts, genes, layers=[-1], min_mapped_fraction=0.99))
    assert refused.status_code == 400
    taken = _post(service_url, embed_item(counts, genes, layers=[-1], min_mapped_fraction=0))
    assert taken.status_code == 200, taken.text
    assert taken.json()[0]["mapped_gene_fraction"] == 0.5


def test_measure_counts_only_known_columns():
    counts = sp.csr_matrix(np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 2.0]]))
    reached = measure(counts, np.array([7, -1, 2]))
    assert reached.gene_fraction == 2 / 3
    np.testing.assert_allclose(reached.cell_count_fractions, [0.25, 1.0, 1.0])
    assert reached.count_fraction == 5 / 8


# -- a gene subset (HVGs): every gene known, every count on them, yet a fraction of the cell --


def _hvg_body(vocabulary, n_genes: int, **fields) -> bytes:
    counts, genes = known_cells(vocabulary, n_cells=2, n_genes=n_genes, seed=8)
    return json.dumps({"items": [embed_item(counts, genes, layers=[-1], **fields)]}).encode()


def test_the_server_default_is_5000_known_genes(monkeypatch):
    monkeypatch.delenv("SCSTRATA_MIN_KNOWN_GENES", raising=False)
    assert Settings.from_env().min_known_genes == DEFAULT_MIN_KNOWN_GENES == 5000


def test_an_hvg_subset_is_refused_by_default_naming_the_fix(monkeypatch, tiny_backend, vocabulary):
    monkeypatch.delenv("SCSTRATA_MIN_KNOWN_GENES", raising=False)
    settings = Settings.from_env()  # the default, not the tests' servers' 0
    body = _hvg_body(vocabulary, 2000)
    with pytest.raises(Refused) as refused:
        admit(body, Registry({"scf": tiny_backend}), False, settings)
    assert refused.value.status == 400
    message = refused.value.message
    assert message.startswith("genes: the request carries 2000 of its 19264 genes model 'scf'")
    assert "highly variable genes" in message and "adata.raw" in message
    assert "min_known_genes" in message and "lower" in message
    assert refused.value.loc == ("items", 0)


def test_half_of_a_small_panel_is_enough():
    assert genes_required(5000, 600) == 300  # a model that knows 600 genes
    assert genes_required(5000, 19264) == 5000
    assert genes_required(0, 19264) == 0


def test_the_request_option_sets_the_minimum(service_url, vocabulary):
    counts, genes = known_cells(vocabulary, n_cells=2, n_genes=300, seed=9)
    refused = _post(service_url, embed_item(counts, genes, layers=[-1], min_known_genes=301))
    assert refused.status_code == 400, refused.text
    assert "fewer than the 301 required (min_known_genes)" in refused.json()["error"]
    taken = _post(service_url, embed_item(counts, genes, layers=[-1], min_known_genes=300))
    assert taken.status_code == 200, taken.text


def test_a_name_mapped_twice_counts_once():
    counts = sp.csr_matrix(np.ones((1, 3)))
    assert measure(counts, np.array([4, 4, -1])).n_known_genes == 1
