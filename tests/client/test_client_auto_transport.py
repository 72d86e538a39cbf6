"""``transport_format="auto"`` picks npz for a chunk with a large request (many non-zeros) even
when its reply is small or of unknown size, and keeps to JSON for a service whose ``GET /info``
does not list npz."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import scipy.sparse as sp
from client_fakes import FakeService, RecordingTransport, item_matrix, plan_job

from scstrata_client import Client
from scstrata_client._core import NPZ_AUTO_NNZ_THRESHOLD, NPZ_AUTO_THRESHOLD, EmbedJob

from helpers import make_cells

NPZ = "application/x-npz"


def _dense_cells(n_cells: int, n_genes: int, seed: int = 0) -> tuple[sp.csr_matrix, list[str]]:
    """Counts in 1..4 everywhere: ``n_cells * n_genes`` stored non-zeros."""
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(rng.integers(1, 5, size=(n_cells, n_genes)).astype(np.float32))
    return counts, [f"G{j}" for j in range(n_genes)]


def _sent(requests: list[httpx.Request]) -> list[tuple[bool, str | None, bool]]:
    """(cells as cells_npz, the item's format, asks for a raw npz) of each /embed request."""
    out = []
    for request in requests:
        if request.url.path != "/embed":
            continue
        (item,) = json.loads(request.content)["items"]
        assert ("cells_npz" in item) != ("cells" in item)
        out.append(("cells_npz" in item, item.get("format"), request.headers["accept"] == NPZ))
    return out


# -- the choice ---------------------------------------------------------------------------------


def _boundary_job(dim: int | None) -> EmbedJob:
    """Chunk 0 holds exactly NPZ_AUTO_NNZ_THRESHOLD non-zeros, chunk 1 one more."""
    n_cells = 100
    n_genes, rest = divmod(NPZ_AUTO_NNZ_THRESHOLD, n_cells)
    assert rest == 0
    dense = np.zeros((2 * n_cells, n_genes + 1), dtype=np.float32)
    dense[:, :n_genes] = 1.0
    dense[n_cells, n_genes] = 1.0
    genes = [f"G{j}" for j in range(n_genes + 1)]
    job = plan_job(dense, genes, chunk_size=n_cells, layers=0, dim=dim)
    nnz = [job.rows(i).nnz for i in range(job.n_chunks)]
    assert nnz == [NPZ_AUTO_NNZ_THRESHOLD, NPZ_AUTO_NNZ_THRESHOLD + 1]
    return job


@pytest.mark.parametrize("dim", [8, None], ids=["card", "no-card"])
def test_auto_picks_npz_above_the_non_zero_threshold_whatever_the_reply(dim):
    job = _boundary_job(dim)
    # 100 cells x 1 layer x 8 floats: the reply rule alone says JSON for both chunks.
    assert NPZ_AUTO_THRESHOLD >= 100 * 1 * 8
    at, above = job.tasks("auto")
    assert (at.format, at.cells_npz) == ("json", False)
    assert (above.format, above.cells_npz) == ("npz", True)
    assert "Accept" not in job.headers(at) and job.headers(above)["Accept"] == NPZ
    item = job.body(above)["items"][0]
    assert item["format"] == "npz" and "cells_npz" in item and "cells" not in item
    assert "cells" in job.body(at)["items"][0]
    assert above.expected == ((0,) if dim is not None else None)
    # A service that refused npz keeps JSON; an explicit choice wins over the rule.
    assert [t.format for t in job.tasks("auto", npz_ok=False)] == ["json", "json"]
    assert [t.format for t in job.tasks("json")] == ["json", "json"]
    assert [t.format for t in job.tasks("npz")] == ["npz", "npz"]


def test_the_reply_rule_still_applies_to_chunks_with_few_non_zeros(counts, gene_names):
    big_dim = NPZ_AUTO_THRESHOLD // 7 + 1  # 7 cells x 1 layer
    for dim, want in [(big_dim, "npz"), (big_dim - 1, "json")]:
        job = plan_job(counts, gene_names, chunk_size=7, layers=3, dim=dim)
        (task,) = job.tasks("auto")
        assert task.format == want and task.cells_npz == (want == "npz")


# -- against the fake service -------------------------------------------------------------------


def test_a_chunk_with_many_non_zeros_goes_as_npz_with_the_json_results():
    # 64 cells x 2,000 expressed genes, one layer of 768: a 49,152-float reply, far below the
    # reply rule, but 128,000 non-zeros.
    cells, genes = _dense_cells(64, 2_000)
    assert cells.nnz > NPZ_AUTO_NNZ_THRESHOLD and NPZ_AUTO_THRESHOLD >= 64 * 768
    fake = FakeService(dims={"official": 768})
    results, sent = {}, {}
    for fmt in ("auto", "json"):
        client, _ = fake.client(transport_format=fmt, chunk_size=64)
        first = len(fake.calls)
        with client:
            results[fmt] = client.embed(cells, genes, model="scfoundation", layers=-1)
        sent[fmt] = _sent(fake.calls[first:])
    assert sent["auto"] == [(True, "npz", True)]
    assert sent["json"] == [(False, None, False)]
    assert sorted(results["auto"]) == [12]
    np.testing.assert_array_equal(results["auto"][12], results["json"][12])
    np.testing.assert_allclose(results["auto"][12][:, 0], np.asarray(cells.sum(axis=1)).ravel())


def test_a_small_chunk_under_auto_stays_json(counts, gene_names):
    fake = FakeService()
    client, _ = fake.client(chunk_size=7)  # "auto" is the default
    with client:
        result = client.embed(counts, gene_names, model="scfoundation", layers=[0, 2])
    assert _sent(fake.calls) == [(False, None, False)]
    np.testing.assert_allclose(result[2][:, 0], counts.sum(axis=1))


def test_no_model_card_and_many_non_zeros_goes_as_npz():
    # A model missing from GET /models: neither layers nor dim are known before the first
    # reply, which then fixes both for the other chunks (here a JSON one and an npz one).
    cells, genes = _dense_cells(160, 1_000, seed=1)
    fake = FakeService()
    client, _ = fake.client(chunk_size=120, max_concurrency=1)  # 120,000 + 40,000 non-zeros
    with client:
        result = client.embed(cells, genes, model="not-carded", layers="all")
    assert _sent(fake.calls) == [(True, "npz", True), (False, None, False)]
    assert sorted(result) == list(range(13))
    for k in (0, 12):
        np.testing.assert_allclose(result[k][:, 0], np.asarray(cells.sum(axis=1)).ravel())
        assert (result[k][:, 1] == k).all()


# -- an older service ---------------------------------------------------------------------------


def test_auto_with_many_non_zeros_against_a_service_without_npz(caplog):
    cells, genes = _dense_cells(3 * 60, 2_000, seed=2)  # 120,000 non-zeros a chunk
    fake = FakeService(supports_npz=False)
    client, sleeps = fake.client(chunk_size=60, max_concurrency=1)
    with client, caplog.at_level("INFO", logger="scstrata_client"):
        result = client.embed(cells, genes, model="scfoundation", layers=[0, 1])
        again = client.embed(cells[:60], genes, model="scfoundation", layers=1)
    # /info, read once, lists no npz: JSON both ways from the first request on
    assert _sent(fake.calls) == [(False, None, False)] * 4
    assert fake.info_calls == 1
    assert sleeps == []
    assert sum("offers JSON only" in r.message for r in caplog.records) == 1
    for k in (0, 1):
        np.testing.assert_allclose(result[k][:, 0], np.asarray(cells.sum(axis=1)).ravel())
        assert (result[k][:, 1] == k).all()
    np.testing.assert_array_equal(again[1], result[1][:60])


def test_auto_with_many_non_zeros_against_a_service_without_cells_npz():
    cells, genes = _dense_cells(2 * 60, 2_000, seed=3)
    fake = FakeService(supports_cells_npz=False)
    client, _ = fake.client(chunk_size=60, max_concurrency=1)
    with client:
        result = client.embed(cells, genes, model="scfoundation", layers=0)
    # The npz reply stays; only the cells go as JSON lists.
    assert _sent(fake.calls) == [(False, "npz", True)] * 2
    np.testing.assert_allclose(result[0][:, 0], np.asarray(cells.sum(axis=1)).ravel())


def test_async_auto_with_many_non_zeros_against_a_service_without_npz():
    cells, genes = _dense_cells(2 * 60, 2_000, seed=4)
    fake = FakeService(supports_npz=False)
    client, _ = fake.async_client(chunk_size=60, max_concurrency=1)

    async def main():
        async with client:
            return await client.embed(cells, genes, model="scfoundation", layers=2)

    result = asyncio.run(main())
    assert _sent(fake.calls) == [(False, None, False)] * 2
    np.testing.assert_allclose(result[2][:, 0], np.asarray(cells.sum(axis=1)).ravel())


def test_small_json_runs_never_ask_for_info(counts, gene_names):
    # Nothing beyond JSON to use: no /info request (and none of its latency).
    fake = FakeService()
    client, _ = fake.client(chunk_size=4)
    with client:
        client.embed(counts, gene_names, model="scfoundation", layers=0)
    assert fake.info_calls == 0 and len(fake.embed_bodies) == 2


# -- against the real service -------------------------------------------------------------------


def test_auto_sends_cells_npz_to_the_service_for_a_large_request(service_url, vocabulary):
    # One layer of the 32-dim "S" pooling: a small reply, but more non-zeros than the threshold.
    counts, genes = make_cells(vocabulary, n_cells=200, n_genes=600, seed=91)
    counts = counts + sp.csr_matrix(np.ones(counts.shape))  # every gene expressed
    assert counts.nnz > NPZ_AUTO_NNZ_THRESHOLD
    transport = RecordingTransport()
    with Client(service_url, chunk_size=200, cache=False, transport=transport) as client:
        auto = client.embed(counts, genes, model="scf", layers=-1, pooling="S")
    with Client(service_url, chunk_size=200, cache=False, transport_format="json") as client:
        plain = client.embed(counts, genes, model="scf", layers=-1, pooling="S")
    assert _sent(transport.requests) == [(True, "npz", True)]
    # the service's features, from its /info: read once, before the first npz request
    paths = [r.url.path for r in transport.requests]
    assert paths == ["/models", "/info", "/embed"]
    assert transport.reply_kinds[0][0].startswith(NPZ)
    (body,) = [json.loads(r.content)["items"][0] for r in transport.embed_requests]
    assert (item_matrix(body) != sp.csr_matrix(counts, dtype=np.float32)).nnz == 0
    np.testing.assert_allclose(auto[3], plain[3], rtol=0, atol=1e-6)
