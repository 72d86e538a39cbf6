"""The client sends cells as binary ``cells_npz`` with the npz transport, gets the same numbers
as with JSON ``cells``, keeps its cache keys, and sends JSON cells to a service whose
``GET /info`` does not list ``cells_npz``."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pytest
import scipy.sparse as sp
from client_fakes import FakeService, RecordingTransport, item_matrix, plan_job

from scstrata_client import AsyncClient, Client, InvalidRequest
from scstrata_client._protocol import build_item

from helpers import make_cells

EXACT = dict(rtol=0, atol=1e-6)


def _bodies(requests: list[httpx.Request]) -> list[dict]:
    return [json.loads(r.content)["items"][0] for r in requests if r.url.path == "/embed"]


def _npz_members(item: dict) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(item["cells_npz"])), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


# -- the item -----------------------------------------------------------------------------------


def test_build_item_encodes_the_same_csr_as_the_json_cells(counts, gene_names):
    cells = sp.csr_matrix(counts)
    cells[2, 1] = 0.0  # a stored zero: dropped in both encodings
    args = dict(model="m", layers="all", pooling="official", options=None)
    as_json = build_item(cells, gene_names, **args)
    as_npz = build_item(cells, gene_names, format="npz", cells_npz=True, **args)
    assert "cells_npz" not in as_json and "cells" not in as_npz
    assert as_npz["genes"] == gene_names and as_npz["format"] == "npz"
    members = _npz_members(as_npz)
    assert sorted(members) == ["data", "indices", "indptr", "shape"]
    assert members["data"].dtype == np.float32
    assert members["indices"].dtype == members["indptr"].dtype == np.int32
    assert members["shape"].dtype == np.int64 and members["shape"].tolist() == [7, 4]
    for name in ("data", "indices", "indptr", "shape"):
        assert members[name].tolist() == as_json["cells"][name], name
    np.testing.assert_array_equal(item_matrix(as_npz).toarray(), cells.toarray())


def test_npz_tasks_send_cells_npz_and_json_tasks_send_cells(counts, gene_names):
    job = plan_job(counts, gene_names, chunk_size=7, dim=3)
    (npz_task,) = job.tasks("npz")
    (json_task,) = job.tasks("json")
    (auto_task,) = job.tasks("auto")  # 7 x 13 x 3 floats: small, so JSON
    assert npz_task.cells_npz and not json_task.cells_npz and not auto_task.cells_npz
    assert "cells_npz" in job.body(npz_task)["items"][0]
    assert "cells" in job.body(json_task)["items"][0]
    assert "cells" in job.body(npz_task.with_json_cells())["items"][0]
    assert job.body(npz_task.with_json_cells())["items"][0]["format"] == "npz"
    assert not npz_task.as_json().cells_npz and npz_task.as_json().format == "json"


# -- against the real service ---------------------------------------------------------------------


def test_npz_transport_sends_cells_npz_with_the_same_results_as_json(
    service_url, tiny_backend, vocabulary
):
    counts, genes = make_cells(vocabulary, n_cells=11, seed=81)
    results, bodies = {}, {}
    for fmt in ("json", "npz"):
        transport = RecordingTransport()
        with Client(
            service_url, chunk_size=4, cache=False, transport_format=fmt, transport=transport
        ) as client:
            results[fmt] = client.embed(counts, genes, model="scf", layers=[0, -1], pooling="S")
        bodies[fmt] = _bodies(transport.requests)
    assert len(bodies["npz"]) == len(bodies["json"]) == 3
    assert all("cells_npz" in b and "cells" not in b for b in bodies["npz"])
    assert all("cells" in b and "cells_npz" not in b for b in bodies["json"])
    # Sent from concurrent threads: the order they reach the transport in may vary.
    assert sorted(item_matrix(b).shape[0] for b in bodies["npz"]) == [3, 4, 4]
    expected = tiny_backend.embed(tiny_backend.tokenize(counts, genes, {}), [0, 3], ["S"])["S"]
    assert sorted(results["npz"]) == [0, 3]
    for k in (0, 3):
        np.testing.assert_allclose(results["npz"][k], results["json"][k], **EXACT)
        np.testing.assert_allclose(results["npz"][k], expected[k], rtol=1e-5, atol=1e-5)


def test_auto_sends_cells_npz_for_large_chunks(service_url, vocabulary):
    # 400 cells x 4 layers x 128 (official) > 200,000 floats: "auto" picks npz both ways.
    counts, genes = make_cells(vocabulary, n_cells=400, n_genes=200, seed=82)
    transport = RecordingTransport()
    with Client(service_url, chunk_size=400, cache=False, transport=transport) as client:
        auto = client.embed(counts, genes, model="scf")
    with Client(service_url, chunk_size=400, cache=False, transport_format="json") as client:
        plain = client.embed(counts, genes, model="scf")
    (body,) = _bodies(transport.requests)
    assert body["format"] == "npz" and "cells_npz" in body and "cells" not in body
    assert transport.reply_kinds[0][0].startswith("application/x-npz")
    for k in range(4):
        np.testing.assert_allclose(auto[k], plain[k], **EXACT)


class _RecordingAsyncTransport(httpx.AsyncHTTPTransport):
    def __init__(self):
        super().__init__()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await super().handle_async_request(request)


def test_async_client_sends_cells_npz_too(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=6, seed=83)
    transport = _RecordingAsyncTransport()

    async def main(fmt, transport=None):
        async with AsyncClient(
            service_url, chunk_size=4, cache=False, transport_format=fmt, transport=transport
        ) as client:
            return await client.embed(counts, genes, model="scf", layers=2, pooling="T")

    got = asyncio.run(main("npz", transport))
    want = asyncio.run(main("json"))
    bodies = _bodies(transport.requests)
    assert len(bodies) == 2 and all("cells_npz" in b and "cells" not in b for b in bodies)
    np.testing.assert_allclose(got[2], want[2], **EXACT)


def test_the_cache_key_does_not_depend_on_the_transport(service_url, vocabulary, tmp_path):
    counts, genes = make_cells(vocabulary, n_cells=9, seed=84)
    first = RecordingTransport()
    with Client(
        service_url, chunk_size=5, cache_dir=tmp_path, transport_format="npz", transport=first
    ) as client:
        sent = client.embed(counts, genes, model="scf", layers="all")
    assert len(first.embed_requests) == 2 and "cells_npz" in _bodies(first.requests)[0]
    second = RecordingTransport()
    with Client(
        service_url, chunk_size=5, cache_dir=tmp_path, transport_format="json", transport=second
    ) as client:
        cached = client.embed(counts, genes, model="scf", layers="all")
    assert second.embed_requests == []  # every chunk came from the cache
    for k in range(4):
        np.testing.assert_array_equal(cached[k], sent[k])


# -- an older service --------------------------------------------------------------------------


def test_a_service_without_cells_npz_gets_json_cells_and_keeps_npz_replies(counts, gene_names):
    fake = FakeService(supports_cells_npz=False)
    client, sleeps = fake.client(transport_format="npz", chunk_size=3, max_concurrency=1)
    with client:
        result = client.embed(counts, gene_names, model="scfoundation", layers=[0, 5])
        again = client.embed(counts[:2], gene_names, model="scfoundation", layers=0)
    bodies = fake.embed_bodies
    sent = [("cells_npz" in b["items"][0], b["items"][0].get("format")) for b in bodies]
    # /info lists npz but not cells_npz: JSON cells from the first request on, npz replies
    assert sent == [(False, "npz")] * 4
    assert fake.info_calls == 1  # read once per client
    assert sleeps == []
    reference, _ = FakeService().client(transport_format="json", chunk_size=3)
    with reference:
        want = reference.embed(counts, gene_names, model="scfoundation", layers=[0, 5])
    for k in (0, 5):
        np.testing.assert_array_equal(result[k], want[k])
    np.testing.assert_allclose(result[5][:, 0], counts.sum(axis=1))
    assert again[0].shape == (2, 3)


def test_auto_against_a_service_without_npz_sends_json_both_ways(counts, gene_names):
    fake = FakeService(dims={"official": 100_000}, supports_npz=False)
    client, _ = fake.client(chunk_size=4, max_concurrency=1)
    with client:
        result = client.embed(counts, gene_names, model="scfoundation", layers=0)
    items = [b["items"][0] for b in fake.embed_bodies]
    assert [("cells_npz" in i, i.get("format")) for i in items] == [(False, None)] * 2
    assert all("cells" in i for i in items)
    np.testing.assert_allclose(result[0][:, 0], counts.sum(axis=1))


@pytest.mark.parametrize("transport_format", ["auto", "npz"])
def test_a_service_without_info_gets_json(counts, gene_names, transport_format):
    # An /info answered 404: a service older than it, assumed to take JSON only.
    fake = FakeService(dims={"official": 100_000}, info=False)
    client, _ = fake.client(chunk_size=4, transport_format=transport_format)
    with client:
        if transport_format == "npz":
            with pytest.raises(ValueError, match="does not offer the npz transport"):
                client.embed(counts, gene_names, model="scfoundation", layers=0)
            return
        result = client.embed(counts, gene_names, model="scfoundation", layers=0)
    items = [b["items"][0] for b in fake.embed_bodies]
    assert [("cells" in i, i.get("format")) for i in items] == [(True, None)] * 2
    np.testing.assert_allclose(result[0][:, 0], counts.sum(axis=1))


def test_async_client_sends_json_cells_to_a_service_without_cells_npz(counts, gene_names):
    fake = FakeService(supports_cells_npz=False)
    client, _ = fake.async_client(transport_format="npz", chunk_size=4, max_concurrency=1)

    async def main():
        async with client:
            return await client.embed(counts, gene_names, model="scfoundation", layers=1)

    result = asyncio.run(main())
    items = [b["items"][0] for b in fake.embed_bodies]
    assert ["cells_npz" in i for i in items] == [False, False]
    assert fake.info_calls == 1
    np.testing.assert_allclose(result[1][:, 0], counts.sum(axis=1))


def test_a_real_complaint_about_cells_npz_is_raised_not_retried(counts, gene_names):
    complaint = httpx.Response(
        400,
        json={
            "error": "1 validation error for Input",
            "detail": [
                {
                    "loc": ["items", 0],
                    "msg": "Value error, cells_npz.data: negative values in rows [0]; "
                    "counts must be >= 0",
                }
            ],
        },
    )
    fake = FakeService(failures={2: complaint})  # calls 0 and 1: /models and /info
    client, _ = fake.client(transport_format="npz", chunk_size=7)
    with client, pytest.raises(InvalidRequest, match=r"cells_npz\.data: negative values"):
        client.embed(counts, gene_names, model="scfoundation", layers=0)
    assert len(fake.embed_bodies) == 1
