"""The client against the real service on loopback (no fakes)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from scstrata_client import Client, InvalidRequest

from helpers import make_cells

TOL = dict(rtol=1e-5, atol=1e-5)


def test_models_returns_the_served_card(service_url):
    with Client(service_url) as client:
        (card,) = client.models()
    assert card.name == "scf" and card.n_layers == 3 and card.poolings["S"] == 32


def test_chunked_embedding_keeps_every_cell_in_input_order(service_url, tiny_backend, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=23, seed=21)
    with Client(service_url, chunk_size=5) as client:  # 5 chunks, the last one short
        layers = client.embed(counts, genes, model="scf", layers="all", pooling="mean")
    expected = tiny_backend.embed(tiny_backend.tokenize(counts, genes, {}), [0, 1, 2, 3], ["mean"])[
        "mean"
    ]
    assert sorted(layers) == [0, 1, 2, 3]
    for k in range(4):
        assert layers[k].dtype == np.float32 and layers[k].shape == (23, 32)
        np.testing.assert_allclose(layers[k], expected[k], **TOL)


def test_anndata_in_obsm_out(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=8, seed=22)
    adata = ad.AnnData(counts.astype(np.float32))
    adata.var_names = genes
    with Client(service_url, chunk_size=3) as client:
        layers = client.embed(adata, model="scf", layers=[-1, 1], write_to=adata)
    assert sorted(layers) == [1, 3]
    np.testing.assert_array_equal(adata.obsm["X_scf_layer3"], layers[3])
    assert adata.obsm["X_scf_layer1"].shape == (8, 128)
    assert adata.uns["scstrata"]["X_scf_layer3"]["model"] == "scf"


def test_a_bad_layer_raises_with_the_servers_message(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=2, seed=23)
    with Client(service_url) as client, pytest.raises(InvalidRequest, match="out of range"):
        client.embed(counts, genes, model="scf", layers=7)
