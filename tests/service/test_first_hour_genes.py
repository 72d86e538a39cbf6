"""Genes the model does not know are never dropped silently (issue 17, point 1).

The reply reports the share of the request's gene names and of each cell's counts that
reached the model; below ``min_mapped_fraction`` of the counts (default 0.5) the request is
refused with a 400 naming the likely cause and the fix.
"""

from __future__ import annotations

import httpx
import numpy as np
import scipy.sparse as sp

from scstrata_service.coverage import DEFAULT_MIN_MAPPED_FRACTION, measure

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
