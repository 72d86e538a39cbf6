"""Concurrent requests share forward passes (adaptive batching) and get their own cells back."""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np

from helpers import embed_item, make_cells

N_REQUESTS = 512


def batch_size_histogram(url: str) -> tuple[float, float]:
    """(sum, count) of BentoML's adaptive batch size histogram for /embed."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("bentoml_service_adaptive_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


async def _send_all(url: str, items: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=N_REQUESTS, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        return await asyncio.gather(
            *(client.post("/embed", json={"items": [item]}) for item in items)
        )


def test_512_concurrent_requests_all_succeed_with_their_own_cells(
    service_url, tiny_backend, vocabulary
):
    rng = np.random.default_rng(5)
    requests, expected = [], []
    for i in range(N_REQUESTS):
        counts, genes = make_cells(
            vocabulary, n_cells=int(rng.integers(1, 4)), n_genes=60, seed=1000 + i
        )
        layers = [int(rng.integers(0, 4))]
        pooling = ["official", "S", "mean"][i % 3]
        requests.append(embed_item(counts, genes, layers=layers, pooling=pooling))
        tokens = tiny_backend.tokenize(counts, genes, {})
        expected.append(tiny_backend.embed(tokens, layers, [pooling])[pooling][layers[0]])

    before = batch_size_histogram(service_url)
    replies = asyncio.run(_send_all(service_url, requests))
    after = batch_size_histogram(service_url)

    statuses = [r.status_code for r in replies]
    assert statuses.count(200) == N_REQUESTS, {s: statuses.count(s) for s in set(statuses)}
    for reply, request, want in zip(replies, requests, expected):
        (result,) = reply.json()
        (layer,) = request["layers"]
        got = np.array(result["layers"][str(layer)])
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    merged_items, dispatches = after[0] - before[0], after[1] - before[1]
    assert merged_items == N_REQUESTS
    # adaptive batching merged concurrent requests: fewer dispatches than requests
    assert dispatches < N_REQUESTS / 2, (merged_items, dispatches)
    assert re.search(
        r"bentoml_service_adaptive_batch_size_bucket",
        httpx.get(f"{service_url}/metrics", timeout=10).text,
    )
