"""Limits before allocation, admission control, timeouts, auth and neighbours' isolation,
against real servers with small limits; the worker PIDs stay the same throughout."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import socket
import time

import anndata as ad
import h5py
import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from scstrata_service.families.tahoe.fabricate import fabricate_checkpoint
from scstrata_service.launcher import running_service

from helpers import embed_item, make_cells, server_pids


def post(url: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/embed", json=body, timeout=120, **kwargs)


def raw_http(url: str, request: bytes, wait_s: float) -> tuple[bytes, float]:
    """Send bytes as they are; return what came back within ``wait_s`` and how long it took."""
    host, port = url.removeprefix("http://").split(":")
    start = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(request)
        reply = b""
        try:
            while b"\r\n\r\n" not in reply:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except TimeoutError:
            pass
    return reply, time.perf_counter() - start


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def same_worker_throughout(checkpoint, env: dict):
    """A server of the tiny checkpoint with ``env``, whose PIDs must not change."""
    with running_service([f"scf=scfoundation:{checkpoint.parent}"], env=env) as url:
        pids = server_pids(url)
        yield url
        assert server_pids(url) == pids


@pytest.fixture(scope="module")
def limited_url(tiny_checkpoint):
    env = {
        "SCSTRATA_MAX_CELLS": "5",
        "SCSTRATA_MAX_REQUEST_TOKENS": "3000",
        "SCSTRATA_MAX_BODY_MB": "1",
        "SCSTRATA_READ_TIMEOUT_S": "2",
        "SCSTRATA_MAX_QUEUED_CELLS": "4",
    }
    yield from same_worker_throughout(tiny_checkpoint, env)


def test_cells_are_counted_over_all_items_of_a_request(limited_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=2, n_genes=50, seed=91)
    item = embed_item(counts, genes, layers=0)
    assert post(limited_url, {"items": [item, item]}).status_code == 200
    three = post(limited_url, {"items": [item, item, item]})
    assert three.status_code == 413, three.text
    assert "6 cells exceed" in three.text and "all items together" in three.text


def test_tokens_per_request_are_the_expressed_genes_summed(limited_url, vocabulary):
    genes = vocabulary[:800]
    dense = np.ones((4, len(genes)))  # 4 cells expressing every gene: 3,200 tokens
    reply = post(limited_url, {"items": [embed_item(sp.csr_matrix(dense), genes, layers=0)]})
    assert reply.status_code == 413, reply.text
    assert "3200 expressed genes" in reply.text and "limit of 3000" in reply.text
    assert "SCSTRATA_MAX_REQUEST_TOKENS" in reply.text
    fewer = post(limited_url, {"items": [embed_item(sp.csr_matrix(dense[:3]), genes, layers=0)]})
    assert fewer.status_code == 200, fewer.text


def test_an_h5ad_declaring_a_huge_matrix_is_refused_from_its_metadata(
    limited_url, vocabulary, tmp_path
):
    counts, genes = make_cells(vocabulary, n_cells=2, n_genes=50, seed=92)
    adata = ad.AnnData(sp.csr_matrix(counts, dtype=np.float32))
    adata.var_names = genes
    path = tmp_path / "huge.h5ad"
    adata.write_h5ad(path)
    with h5py.File(path, "a") as f:  # 60k x 19,264 cells declared; chunks never written
        for name in ("data", "indices"):
            del f[f"X/{name}"]
            f.create_dataset(
                f"X/{name}", (10**9,), "f4" if name == "data" else "i4", chunks=(4096,)
            )
        f["X"].attrs["shape"] = (60_000, 19_264)
    upload = path.read_bytes()
    assert len(upload) < 200_000
    start = time.perf_counter()
    reply = post(
        limited_url, {"items": [{"model": "scf", "h5ad": base64.b64encode(upload).decode()}]}
    )
    assert reply.status_code == 413, reply.text
    assert "declare" in reply.text and "h5ad" in reply.text
    assert time.perf_counter() - start < 10  # nothing was read or allocated


def test_a_body_over_the_limit_is_refused_before_it_is_sent(limited_url):
    head = (
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 300000000\r\n\r\n"
    )
    reply, seconds = raw_http(limited_url, head, wait_s=10)  # no byte of the body sent
    assert status_of(reply) == 413, reply
    assert seconds < 5


def test_a_body_shorter_than_its_content_length_gets_408(limited_url):
    head = (
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"items": '
    )
    reply, seconds = raw_http(limited_url, head, wait_s=20)
    assert status_of(reply) == 408, reply
    assert 1.5 < seconds < 10  # SCSTRATA_READ_TIMEOUT_S=2


def test_a_full_backlog_answers_503_with_retry_after(limited_url, vocabulary):
    """4 cells a request, 4 queued at most: while one is queued the backlog is full, new ones
    get 503, and /readyz says not ready."""
    counts, genes = make_cells(vocabulary, n_cells=4, n_genes=100, seed=93)
    body = {"items": [embed_item(counts, genes, layers="all")]}
    ready: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(17) as pool:
        replies = pool.map(lambda _: post(limited_url, body), range(32))
        while len(ready) < 200 and 503 not in ready:
            ready.append(httpx.get(f"{limited_url}/readyz", timeout=10).status_code)
        replies = list(replies)
    assert 503 in ready, ready
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    busy = next(r for r in replies if r.status_code == 503)
    assert int(busy.headers["retry-after"]) > 0 and "busy" in busy.json()["error"]
    assert httpx.get(f"{limited_url}/readyz", timeout=10).status_code == 200  # drained


# --- auth, and a per-request deadline ------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_url(tiny_checkpoint):
    """Bearer auth with 5 wrong tokens a minute allowed, and a deadline of 0 s: every /embed
    item is dropped before its forward pass."""
    env = {
        "SCSTRATA_TOKEN": "s3cret",
        "SCSTRATA_AUTH_FAILURES": "5",
        "SCSTRATA_REQUEST_TIMEOUT_S": "0",
    }
    yield from same_worker_throughout(tiny_checkpoint, env)


def test_a_non_ascii_authorization_header_is_a_401_at_once(guarded_url):
    request = (
        b"GET /models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr\xc3\xa9t\r\n"
        b"Connection: close\r\n\r\n"
    )
    reply, seconds = raw_http(guarded_url, request, wait_s=10)
    assert status_of(reply) == 401, reply
    assert seconds < 3
    ok = httpx.get(f"{guarded_url}/models", headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_the_token_is_compared_exactly_and_only_the_scheme_ignores_case(guarded_url):
    def models(value: str) -> int:
        return httpx.get(f"{guarded_url}/models", headers={"authorization": value}).status_code

    assert models("bearer s3cret") == 200 and models("BEARER s3cret") == 200
    assert models("Bearer  s3cret") == 401  # no stripping
    assert models("Bearer S3CRET") == 401


def test_dropped_work_past_its_deadline_is_not_computed(guarded_url, vocabulary):
    auth = {"authorization": "Bearer s3cret"}

    def cells_embedded() -> float:
        text = httpx.get(f"{guarded_url}/metrics", headers=auth, timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("scstrata_cells_embedded_total")
        )

    counts, genes = make_cells(vocabulary, n_cells=3, seed=94)
    before = cells_embedded()
    reply = post(guarded_url, {"items": [embed_item(counts, genes)]}, headers=auth)
    assert reply.status_code == 503 and "deadline" in reply.json()["error"], reply.text
    assert int(reply.headers["retry-after"]) > 0
    assert cells_embedded() == before


def test_wrong_tokens_are_rate_limited(guarded_url):
    statuses = [
        httpx.get(f"{guarded_url}/models", headers={"authorization": "Bearer nope"}).status_code
        for _ in range(6)
    ]
    assert statuses[-1] == 429 and set(statuses) <= {401, 429}, statuses
    limited = httpx.get(f"{guarded_url}/models", headers={"authorization": "Bearer s3cret"})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert httpx.get(f"{guarded_url}/livez").status_code == 200  # health stays open


# --- one bad item among concurrent good ones ----------------------------------------------


def test_an_overflowing_seed_merged_with_16_good_requests_fails_alone(tmp_path):
    folder = fabricate_checkpoint(tmp_path / "tx", max_length=32)
    vocab = [g for g in json.loads((folder / "vocab.json").read_text()) if not g.startswith("<")]
    rng = np.random.default_rng(95)
    genes = list(rng.choice(vocab, 100, replace=False))
    dense = rng.poisson(1.5, (4, len(genes))) * (rng.random((4, len(genes))) < 0.5)
    dense[:, 0] += 1
    good = {**embed_item(sp.csr_matrix(dense.astype(float)), genes, layers="all"), "model": "tx"}
    bad = {**good, "options": {"seed": 2**63}}
    bodies = [{"items": [good]}] * 8 + [{"items": [bad]}] + [{"items": [good]}] * 8
    with running_service([f"tx=tahoe:{folder}"]) as url:
        pids = server_pids(url)
        with concurrent.futures.ThreadPoolExecutor(17) as pool:
            replies = list(pool.map(lambda body: post(url, body), bodies))
        assert server_pids(url) == pids
    refused = replies[8]
    assert refused.status_code == 400 and "options.seed" in refused.text, refused.text
    others = [r for i, r in enumerate(replies) if i != 8]
    assert [r.status_code for r in others] == [200] * 16
    first = others[0].json()[0]["layers"]
    for reply in others[1:]:
        for k, rows in reply.json()[0]["layers"].items():
            np.testing.assert_allclose(rows, first[k], atol=1e-5)
