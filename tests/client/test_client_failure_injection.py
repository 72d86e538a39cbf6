"""The Client's retry, auth and reassembly behaviour, with failures injected by MockTransport.

No server: ``FakeService`` answers like the service would, except for the failures it
injects. Call 0 is always ``GET /models`` (fetched once per client); chunks follow.
"""

from __future__ import annotations

import anndata as ad
import httpx
import numpy as np
import pytest
import scipy.sparse as sp
from client_fakes import FakeService

from scstrata_client import (
    Client,
    InvalidRequest,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
)


def test_503_with_retry_after_is_retried_after_the_advised_wait(counts, gene_names):
    busy = httpx.Response(503, headers={"Retry-After": "2"}, json={"error": "overloaded"})
    fake = FakeService(failures={1: busy})
    client, sleeps = fake.client(backoff=0.01)
    with client:
        result = client.embed(counts, gene_names, model="scfoundation")
    assert len(fake.embed_bodies) == 2
    assert len(sleeps) == 1 and 2.0 <= sleeps[0] < 2.02
    np.testing.assert_allclose(result[0][:, 0], counts.sum(axis=1))


def test_invalid_request_is_raised_at_once_with_the_server_message(counts, gene_names):
    bad = httpx.Response(
        422,
        json={"error": "invalid request", "detail": [{"msg": "layers: layer 40 is out of range"}]},
    )
    fake = FakeService(failures={1: bad})
    client, sleeps = fake.client()
    with client, pytest.raises(InvalidRequest, match="layer 40 is out of range") as info:
        client.embed(counts, gene_names, model="scfoundation", layers=40)
    assert info.value.status_code == 422
    assert len(fake.embed_bodies) == 1
    assert fake.embed_bodies[0]["items"][0]["layers"] == 40  # sent as given: the card says no
    assert sleeps == []


def test_connection_errors_exhaust_the_retries_then_raise(counts, gene_names):
    refused = {n: httpx.ConnectError("connection refused") for n in range(1, 10)}
    fake = FakeService(failures=refused)
    client, sleeps = fake.client(max_retries=2, backoff=0.5)
    with client, pytest.raises(TransportError, match="after 3 attempt"):
        client.embed(counts, gene_names, model="scfoundation")
    assert len(fake.calls) == 1 + 3
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] < 1.0 and 1.0 <= sleeps[1] < 2.0  # doubling, plus jitter


def test_persistent_503_raises_service_unavailable(counts, gene_names):
    busy = {n: httpx.Response(503, text="busy") for n in range(1, 10)}
    fake = FakeService(failures=busy)
    client, _ = fake.client(max_retries=1, backoff=0.0)
    with client, pytest.raises(ServiceUnavailable, match="busy"):
        client.embed(counts, gene_names, model="scfoundation")
    assert len(fake.embed_bodies) == 2


def test_chunks_survive_a_timeout_and_come_back_in_input_order(counts, gene_names):
    adata = ad.AnnData(X=sp.csr_matrix(counts))
    adata.var_names = gene_names
    fake = FakeService(failures={2: httpx.ReadTimeout("slow")})
    client, sleeps = fake.client(chunk_size=3, backoff=0.0, progress=False, max_concurrency=1)
    with client:
        result = client.embed(adata, model="scfoundation", write_to=adata)

    bodies = fake.embed_bodies
    assert [len(b["items"]) for b in bodies] == [1, 1, 1, 1]
    assert [b["items"][0]["cells"]["shape"][0] for b in bodies] == [3, 3, 3, 1]
    assert len(sleeps) == 1
    assert list(result) == list(range(13))
    np.testing.assert_allclose(result[12][:, 0], counts.sum(axis=1))
    np.testing.assert_array_equal(result[12][:, 1], np.full(7, 12.0))
    np.testing.assert_array_equal(adata.obsm["X_scfoundation_layer12"], result[12])
    record = adata.uns["scstrata"]["X_scfoundation_layer12"]
    assert record["n_layers"] == 12 and record["checkpoint_digest"] == "sha256:00"


def test_concurrent_chunks_with_failures_keep_every_cell_once_in_order(gene_names):
    rng = np.random.default_rng(5)
    counts = rng.poisson(3.0, size=(50, 4)).astype(float) + np.arange(50)[:, None] * 10
    failures = {
        3: httpx.ConnectError("reset"),
        5: httpx.Response(503, json={"error": "busy"}),
        6: httpx.RemoteProtocolError("server closed the connection"),
        9: httpx.Response(429, headers={"Retry-After": "0"}, text="slow down"),
    }
    fake = FakeService(failures=failures, delay=0.01)
    client, sleeps = fake.client(chunk_size=4, max_concurrency=4, backoff=0.0)
    with client:
        result = client.embed(counts, gene_names, model="scfoundation", layers=[0, -1])
    assert sorted(result) == [0, 12]
    np.testing.assert_allclose(result[12][:, 0], counts.sum(axis=1))  # every row its own cell
    assert len(sleeps) == 4
    assert len(fake.embed_bodies) == 13 + 4  # 13 chunks, each failure retried once
    assert 1 < fake.max_in_flight <= 4


def test_chosen_layers_record_n_layers_from_a_model_card_fetched_once(counts, gene_names):
    adata = ad.AnnData(X=counts)
    fake = FakeService(failures={0: httpx.Response(429, text="slow down")})
    client, _ = fake.client(backoff=0.0)
    with client:
        for _ in range(2):
            client.embed(
                counts, gene_names, model="scfoundation", layers=[6], pooling="S", write_to=adata
            )
    paths = [r.url.path for r in fake.calls]
    assert paths == ["/models", "/models", "/embed", "/embed"]
    assert fake.embed_bodies[0]["items"][0]["layers"] == [6]
    record = adata.uns["scstrata"]["X_scfoundation_layer6_S"]
    assert record["n_layers"] == 12
    assert record["depth"] == pytest.approx(0.5)


def test_token_is_sent_as_a_bearer_header_and_never_shown(counts, gene_names):
    fake = FakeService(token="s3cret")
    client, _ = fake.client(token="s3cret")
    with client:
        client.embed(counts, gene_names, model="scfoundation", layers=0)
    assert all(r.headers["authorization"] == "Bearer s3cret" for r in fake.calls)
    assert "s3cret" not in repr(client)


def test_token_comes_from_the_environment(monkeypatch, counts, gene_names):
    monkeypatch.setenv("SCSTRATA_TOKEN", "from-env")
    fake = FakeService(token="from-env")
    client, _ = fake.client()
    with client:
        client.embed(counts, gene_names, model="scfoundation", layers=0)
    assert fake.calls[-1].headers["authorization"] == "Bearer from-env"


def test_a_missing_token_raises_unauthorized_without_retrying(monkeypatch, counts, gene_names):
    monkeypatch.delenv("SCSTRATA_TOKEN", raising=False)
    fake = FakeService(token="s3cret")
    client, sleeps = fake.client()
    with client, pytest.raises(Unauthorized) as info:
        client.embed(counts, gene_names, model="scfoundation")
    assert isinstance(info.value, InvalidRequest) and info.value.status_code == 401
    assert "missing or invalid bearer token" in str(info.value)
    assert "SCSTRATA_TOKEN" in str(info.value)
    assert len(fake.calls) == 1 and sleeps == []


def test_a_failing_chunk_stops_the_run_and_keeps_no_partial_result(counts, gene_names):
    bad = httpx.Response(400, json={"error": "cells.data: negative values in rows [0]"})
    fake = FakeService(failures={2: bad})
    client, _ = fake.client(chunk_size=2, max_concurrency=1)
    with client, pytest.raises(InvalidRequest, match="negative values"):
        client.embed(counts, gene_names, model="scfoundation")
    assert len(fake.embed_bodies) == 2  # the remaining chunks were never sent


def test_client_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_concurrency"):
        Client("http://svc", max_concurrency=0)
    with pytest.raises(ValueError, match="transport_format"):
        Client("http://svc", transport_format="xml")
