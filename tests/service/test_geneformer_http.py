"""A Geneformer checkpoint served by the real server (`scstrata serve` on loopback).

Tolerance: 1e-5 between the HTTP reply (JSON floats) and the in-process backend.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from scstrata_service.families import geneformer
from scstrata_service.families.geneformer.fabricate import fabricate_checkpoint

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from scstrata_service.launcher import running_service

    folder = fabricate_checkpoint(tmp_path_factory.mktemp("gf_http"), version="V2", n_layers=3)
    with running_service([f"gf=geneformer:{folder}"]) as url:
        yield url, geneformer.load("gf", folder)


def item(counts: sp.csr_matrix, genes: list[str], **fields) -> dict:
    """A request item as docs/api.md describes it."""
    return {
        "model": "gf",
        "genes": genes,
        "cells": {
            "data": counts.data.tolist(),
            "indices": counts.indices.tolist(),
            "indptr": counts.indptr.tolist(),
            "shape": list(counts.shape),
        },
        **fields,
    }


def test_card_and_embeddings_over_http_equal_the_in_process_backend(served):
    url, backend = served
    (card,) = httpx.get(f"{url}/models", timeout=10).json()
    assert card["name"] == "gf" and card["family"] == "geneformer"
    assert card["n_layers"] == 3 and card["gene_id_kind"] == "ensembl"
    assert card["poolings"] == {"official": 32, "mean": 32, "cls": 32}
    assert card["demo_weights"] is True and card["vocab_size"] == 400

    rng = np.random.default_rng(21)
    genes = [*rng.choice(backend.tokenizer.genes, 200, replace=False), "ENSG_NOT_A_GENE"]
    dense = rng.poisson(1.0, (5, len(genes))) * (rng.random((5, len(genes))) < 0.3)
    dense[:, 0] += 1
    counts = sp.csr_matrix(dense.astype(np.float64))
    body = {
        "items": [
            item(counts, genes, layers="all", pooling="official"),
            item(counts, genes, layers=[-1, 1], pooling="cls"),
        ]
    }
    reply = httpx.post(f"{url}/embed", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    official, cls = reply.json()
    assert official["n_unmapped_genes"] == 1 and official["unmapped_genes"] == ["ENSG_NOT_A_GENE"]
    assert sorted(official["layers"], key=int) == ["0", "1", "2", "3"]
    assert sorted(cls["layers"]) == ["1", "3"]
    expected = backend.embed(backend.tokenize(counts, genes, {}), [0, 1, 2, 3], ["official", "cls"])
    for k in range(4):
        np.testing.assert_allclose(official["layers"][str(k)], expected["official"][k], **TOL)
    for k in (1, 3):
        np.testing.assert_allclose(cls["layers"][str(k)], expected["cls"][k], **TOL)

    symbols = item(counts, [f"GENE{i}" for i in range(len(genes))])
    bad = httpx.post(f"{url}/embed", json={"items": [symbols]}, timeout=60)
    assert bad.status_code == 400 and "genes" in bad.text and "Ensembl" in bad.text
