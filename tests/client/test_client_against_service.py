"""The client against the real service on loopback (no fakes)."""

from __future__ import annotations

import asyncio
import json

import anndata as ad
import httpx
import numpy as np
import pytest
from client_fakes import RecordingTransport

from scstrata_client import AsyncClient, Client, InvalidRequest, TransportError

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


def _expected(tiny_backend, counts, genes, layers, pooling):
    tokens = tiny_backend.tokenize(counts, genes, {})
    return tiny_backend.embed(tokens, layers, [pooling])[pooling]


def test_sweep_then_a_second_sweep_is_served_from_cache(
    service_url, tiny_backend, vocabulary, tmp_path
):
    counts, genes = make_cells(vocabulary, n_cells=40, seed=24)
    adata = ad.AnnData(counts.astype(np.float32))
    adata.var_names = genes
    expected = _expected(tiny_backend, counts, genes, [0, 1, 2, 3], "S")
    transport = RecordingTransport()
    with Client(service_url, chunk_size=10, cache_dir=tmp_path, transport=transport) as client:
        first = dict(client.sweep(adata, "scf", pooling="S", write_to=adata))
        sent = len(transport.embed_requests)
        second = dict(client.sweep(adata, "scf", pooling="S"))
    assert sent == 4  # one request per chunk for all layers
    assert len(transport.embed_requests) == 4  # nothing sent the second time
    for k in range(4):
        np.testing.assert_allclose(first[k], expected[k], **TOL)
        np.testing.assert_array_equal(second[k], first[k])
        np.testing.assert_array_equal(adata.obsm[f"X_scf_layer{k}_S"], first[k])
    record = adata.uns["scstrata"]["X_scf_layer2_S"]
    assert record["n_layers"] == 3 and record["checkpoint_digest"].startswith("sha256:")


def test_layer_fetches_only_what_is_missing(service_url, tiny_backend, vocabulary, tmp_path):
    counts, genes = make_cells(vocabulary, n_cells=12, seed=25)
    transport = RecordingTransport()
    with Client(service_url, chunk_size=6, cache_dir=tmp_path, transport=transport) as client:
        client.embed(counts, genes, model="scf", layers=[0, 1], pooling="mean")
        again = client.layer(counts, "scf", 1, genes=genes, pooling="mean")
        assert len(transport.embed_requests) == 2
        last = client.layer(counts, "scf", -1, genes=genes, pooling="mean")
    asked = [json.loads(r.content)["items"][0]["layers"] for r in transport.embed_requests[2:]]
    assert asked == [-1, -1]
    expected = _expected(tiny_backend, counts, genes, [1, 3], "mean")
    np.testing.assert_allclose(again, expected[1], **TOL)
    np.testing.assert_allclose(last, expected[3], **TOL)


def test_injected_failures_on_the_way_to_the_real_service_lose_no_cell(
    service_url, tiny_backend, vocabulary
):
    counts, genes = make_cells(vocabulary, n_cells=30, seed=26)
    failures = {
        2: "lose-reply",  # the server embedded the chunk, the reply never arrived
        3: httpx.ConnectError("injected: connection refused"),
        5: httpx.Response(503, headers={"Retry-After": "0"}, json={"error": "overloaded"}),
        7: httpx.ReadTimeout("injected: timed out"),
    }
    transport = RecordingTransport(failures)
    with Client(
        service_url, chunk_size=4, backoff=0.05, cache=False, transport=transport
    ) as client:
        result = client.embed(counts, genes, model="scf", layers=[0, -1], pooling="mean")
    assert len(transport.embed_requests) == 8 + 4  # 8 chunks, 4 retried
    expected = _expected(tiny_backend, counts, genes, [0, 3], "mean")
    for k in (0, 3):
        np.testing.assert_allclose(result[k], expected[k], **TOL)


def test_an_interrupted_sweep_resumes_from_the_cache(service_url, vocabulary, tmp_path):
    # The cache keeps blocks of 256 cells whatever the chunk size, and writes a block once
    # every chunk over it is back: 600 cells in chunks of 128 are chunks 0-4 over blocks
    # 0-2 (cells 0-255, 256-511, 512-599). Call 4 fails, after chunks 0-1 at least are back.
    counts, genes = make_cells(vocabulary, n_cells=600, seed=27)
    failing = RecordingTransport({4: httpx.ConnectError("injected: network down")})
    with (
        Client(
            service_url,
            chunk_size=128,
            max_retries=0,
            max_concurrency=1,
            cache_dir=tmp_path,
            transport=failing,
        ) as client,
        pytest.raises(TransportError),
    ):
        list(client.sweep(counts, "scf", genes=genes))
    transport = RecordingTransport()
    with Client(service_url, chunk_size=128, cache_dir=tmp_path, transport=transport) as client:
        resumed = client.embed(counts, genes, model="scf")
    # block 0 (chunks 0-1) was on disk; block 1 was not (it needs chunk 3, which failed or
    # came after the failure): chunks 2-4 are sent again, not all five
    assert len(transport.embed_requests) == 5 - 2
    with Client(service_url, chunk_size=128, cache=False) as client:
        fresh = client.embed(counts, genes, model="scf")
    for k in range(4):
        np.testing.assert_array_equal(resumed[k], fresh[k])


def test_async_client_against_the_real_service(service_url, tiny_backend, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=17, seed=28)

    async def main():
        async with AsyncClient(service_url, chunk_size=4, cache=False) as client:
            cards = await client.models()
            return cards, await client.embed(counts, genes, model="scf", layers=2, pooling="T")

    cards, result = asyncio.run(main())
    assert cards[0].name == "scf"
    np.testing.assert_allclose(
        result[2], _expected(tiny_backend, counts, genes, [2], "T")[2], **TOL
    )


def test_large_chunks_come_as_raw_npz_with_the_same_numbers_as_json(
    service_url, tiny_backend, vocabulary
):
    # 400 cells x 4 layers x 128 (official) > 200,000 floats: "auto" asks for raw npz.
    counts, genes = make_cells(vocabulary, n_cells=400, n_genes=200, seed=29)
    replies = {}
    for fmt in ("auto", "json"):
        transport = RecordingTransport()
        with Client(
            service_url, chunk_size=400, cache=False, transport_format=fmt, transport=transport
        ) as client:
            replies[fmt] = client.embed(counts, genes, model="scf")
        (kind,) = transport.reply_kinds
        assert kind[0].startswith("application/x-npz" if fmt == "auto" else "application/json")
    expected = _expected(tiny_backend, counts, genes, [0, 1, 2, 3], "official")
    for k in range(4):
        assert replies["auto"][k].shape == (400, 128)
        np.testing.assert_array_equal(replies["auto"][k], replies["json"][k])
        np.testing.assert_allclose(replies["auto"][k], expected[k], **TOL)
