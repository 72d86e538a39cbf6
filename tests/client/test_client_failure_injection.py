"""The Client's retry and reassembly behaviour, with failures injected by httpx.MockTransport.

No server: each handler answers like the service would, except for the failures it injects.
"""

from __future__ import annotations

import json

import anndata as ad
import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from scstrata_client import Client, InvalidRequest, ServiceUnavailable, TransportError

URL = "http://svc:3000"

CARDS = [
    {
        "name": "scfoundation",
        "family": "scfoundation",
        "n_layers": 12,
        "hidden_size": 768,
        "poolings": {"official": 3072, "S": 768},
        "default_pooling": "official",
        "gene_id_kind": "symbol",
        "vocab_size": 19264,
        "checkpoint_digest": "sha256:00",
        "demo_weights": True,
        "options": {"pre_normalized": "..."},
    }
]


class FailureInjector:
    """Fails the calls listed in ``failures`` (by 0-based call number), answers the rest."""

    def __init__(self, make_result, failures=None, layer_keys=(0, 12)):
        self.make_result = make_result
        self.failures = failures or {}
        self.layer_keys = list(layer_keys)
        self.calls: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        n = len(self.calls)
        self.calls.append(request)
        failure = self.failures.get(n)
        if isinstance(failure, Exception):
            raise failure
        if failure is not None:
            return failure
        if request.url.path == "/models":
            return httpx.Response(200, json=CARDS)
        items = json.loads(request.content)["items"]
        return httpx.Response(200, json=[self.make_result(it, self.layer_keys) for it in items])

    def client(self, **kwargs) -> tuple[Client, list[float]]:
        client = Client(URL, transport=httpx.MockTransport(self), **kwargs)
        sleeps: list[float] = []
        client._sleep = sleeps.append
        return client, sleeps


def test_503_with_retry_after_is_retried_after_the_advised_wait(counts, gene_names, make_result):
    busy = httpx.Response(503, headers={"Retry-After": "2"}, json={"error": "overloaded"})
    injector = FailureInjector(make_result, {0: busy})
    client, sleeps = injector.client(backoff=0.01)
    with client:
        result = client.embed(counts, gene_names, model="scfoundation")
    assert len(injector.calls) == 2
    assert len(sleeps) == 1 and 2.0 <= sleeps[0] < 2.02
    np.testing.assert_allclose(result[0][:, 0], counts.sum(axis=1))


def test_invalid_request_is_raised_at_once_with_the_server_message(counts, gene_names, make_result):
    bad = httpx.Response(
        422,
        json={"error": "invalid request", "detail": [{"msg": "layers: layer 40 is out of range"}]},
    )
    injector = FailureInjector(make_result, {0: bad})
    client, sleeps = injector.client()
    with client, pytest.raises(InvalidRequest, match="layer 40 is out of range") as info:
        client.embed(counts, gene_names, model="scfoundation", layers=40)
    assert info.value.status_code == 422
    assert len(injector.calls) == 1
    assert sleeps == []


def test_connection_errors_exhaust_the_retries_then_raise(counts, gene_names, make_result):
    refused = {n: httpx.ConnectError("connection refused") for n in range(10)}
    injector = FailureInjector(make_result, refused)
    client, sleeps = injector.client(max_retries=2, backoff=0.5)
    with client, pytest.raises(TransportError, match="after 3 attempt"):
        client.embed(counts, gene_names, model="scfoundation")
    assert len(injector.calls) == 3
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] < 1.0 and 1.0 <= sleeps[1] < 2.0  # doubling, plus jitter


def test_persistent_503_raises_service_unavailable(counts, gene_names, make_result):
    busy = {n: httpx.Response(503, text="busy") for n in range(10)}
    injector = FailureInjector(make_result, busy)
    client, _ = injector.client(max_retries=1, backoff=0.0)
    with client, pytest.raises(ServiceUnavailable, match="busy"):
        client.embed(counts, gene_names, model="scfoundation")
    assert len(injector.calls) == 2


def test_chunks_survive_a_timeout_and_come_back_in_input_order(counts, gene_names, make_result):
    adata = ad.AnnData(X=sp.csr_matrix(counts))
    adata.var_names = gene_names
    injector = FailureInjector(make_result, {1: httpx.ReadTimeout("slow")})
    client, sleeps = injector.client(chunk_size=3, backoff=0.0, progress=False)
    with client:
        result = client.embed(adata, model="scfoundation", write_to=adata)

    bodies = [json.loads(r.content) for r in injector.calls]
    assert [len(b["items"]) for b in bodies] == [1, 1, 1, 1]
    assert [b["items"][0]["cells"]["shape"][0] for b in bodies] == [3, 3, 3, 1]
    assert len(sleeps) == 1
    assert list(result) == [0, 12]
    np.testing.assert_allclose(result[12][:, 0], counts.sum(axis=1))
    np.testing.assert_array_equal(adata.obsm["X_scfoundation_layer12"], result[12])
    assert adata.uns["scstrata"]["X_scfoundation_layer12"]["n_layers"] == 12


def test_chosen_layers_record_n_layers_from_a_model_card_fetched_once(
    counts, gene_names, make_result
):
    adata = ad.AnnData(X=counts)
    injector = FailureInjector(
        make_result, {0: httpx.Response(429, text="slow down")}, layer_keys=[6]
    )
    client, _ = injector.client(backoff=0.0)
    with client:
        for _ in range(2):
            client.embed(
                counts, gene_names, model="scfoundation", layers=[6], pooling="S", write_to=adata
            )
    paths = [r.url.path for r in injector.calls]
    assert paths == ["/models", "/models", "/embed", "/embed"]
    record = adata.uns["scstrata"]["X_scfoundation_layer6_S"]
    assert record["n_layers"] == 12
    assert record["depth"] == pytest.approx(0.5)
