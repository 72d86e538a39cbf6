"""AsyncClient: the same results and guarantees as Client, through asyncio."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from client_fakes import URL, FakeService

from scstrata_client import AsyncClient, InvalidRequest


def _counts(n=30):
    rng = np.random.default_rng(3)
    return rng.poisson(2.0, size=(n, 4)).astype(float) + np.arange(n)[:, None]


def test_async_embed_equals_the_sync_client(gene_names):
    counts = _counts()
    fake = FakeService()
    sync, _ = fake.client(chunk_size=4)
    with sync:
        expected = sync.embed(counts, gene_names, model="scfoundation", layers=[0, 3])

    async def main():
        client, _ = fake.async_client(chunk_size=4)
        async with client:
            return await client.embed(counts, gene_names, model="scfoundation", layers=[0, 3])

    result = asyncio.run(main())
    assert sorted(result) == [0, 3]
    for k in (0, 3):
        np.testing.assert_array_equal(result[k], expected[k])


def test_at_most_max_concurrency_chunks_are_in_flight(gene_names):
    fake = FakeService()
    state = {"now": 0, "peak": 0}

    async def slow(request: httpx.Request) -> httpx.Response:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.02)
        state["now"] -= 1
        return fake(request)

    async def main():
        transport = httpx.MockTransport(slow)
        async with AsyncClient(
            URL, transport=transport, chunk_size=2, max_concurrency=3, cache=False
        ) as client:
            return await client.embed(_counts(), gene_names, model="scfoundation", layers=1)

    result = asyncio.run(main())
    assert state["peak"] == 3
    np.testing.assert_allclose(result[1][:, 0], _counts().sum(axis=1))


def test_async_retries_transient_failures(gene_names):
    failures = {
        1: httpx.ConnectError("refused"),
        2: httpx.Response(503, headers={"Retry-After": "1"}, text="busy"),
    }
    fake = FakeService(failures=failures)

    async def main():
        client, sleeps = fake.async_client(chunk_size=10, max_concurrency=1, backoff=0.1)
        async with client:
            result = await client.embed(_counts(), gene_names, model="scfoundation", layers=0)
        return result, sleeps

    result, sleeps = asyncio.run(main())
    assert len(sleeps) == 2 and 0.1 <= sleeps[0] < 0.2 and 1.0 <= sleeps[1] < 1.3
    np.testing.assert_allclose(result[0][:, 0], _counts().sum(axis=1))


def test_async_sweep_and_layer(tmp_path, gene_names):
    fake = FakeService(n_layers=2)

    async def main():
        client, _ = fake.async_client(chunk_size=8, cache=True, cache_dir=tmp_path)
        async with client:
            one = await client.layer(_counts(), "scfoundation", -1, genes=gene_names)
            n_before = len(fake.embed_bodies)
            swept = [
                (k, a) async for k, a in client.sweep(_counts(), "scfoundation", genes=gene_names)
            ]
        return one, n_before, swept

    one, n_before, swept = asyncio.run(main())
    assert [k for k, _ in swept] == [2, 0, 1]  # the cached layer first
    np.testing.assert_array_equal(swept[0][1], one)
    assert [b["items"][0]["layers"] for b in fake.embed_bodies[n_before:]] == [[0, 1]] * 4


def test_async_stops_at_the_first_invalid_chunk(gene_names):
    bad = httpx.Response(422, json={"detail": [{"msg": "genes: duplicate names ['A1BG']"}]})
    fake = FakeService(failures={2: bad})

    async def main():
        client, _ = fake.async_client(chunk_size=3, max_concurrency=2)
        async with client:
            await client.embed(_counts(), gene_names, model="scfoundation", layers=0)

    with pytest.raises(InvalidRequest, match="duplicate names"):
        asyncio.run(main())
