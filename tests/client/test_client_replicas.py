"""Several service URLs: chunks spread by outstanding requests, a failing replica taken out
and back in after its health check, per-replica figures. Fakes on httpx.MockTransport."""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx
import numpy as np
import pytest
import scipy.sparse as sp
from client_fakes import FakeService, Replicas

from scstrata_client import AsyncClient, Client, TransportError
from scstrata_client._replicas import parse_urls
from scstrata_client.store import read_store

GENES = ["A1BG", "TP53", "GAPDH", "ACTB"]
MODEL = "scfoundation"


class Replica(FakeService):
    """A fake replica that stops after ``stop_after`` answered chunks, counting answers."""

    def __init__(self, stop_after: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.stop_after = stop_after
        self.answered = 0
        self.paths_after_stop: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.stopped:
            self.paths_after_stop.append(request.url.path)
        response = super().__call__(request)
        if request.url.path == "/embed":
            with self._lock:
                self.answered += 1
                if self.stop_after is not None and self.answered >= self.stop_after:
                    self.stopped = True
        return response


def _cells(n: int) -> sp.csr_matrix:
    rng = np.random.default_rng(3)
    counts = rng.poisson(1.0, size=(n, len(GENES))).astype(np.float32)
    counts[:, 0] += 1 + np.arange(n)
    return sp.csr_matrix(counts)


def _expected_first_column(cells: sp.csr_matrix) -> np.ndarray:
    return np.asarray(cells.sum(axis=1)).ravel().astype(np.float32)


def test_urls_are_parsed_from_a_list_or_a_comma_separated_string():
    assert parse_urls("http://a:1/, http://b:2") == ["http://a:1", "http://b:2"]
    assert parse_urls(["http://a:1"]) == ["http://a:1"]
    with pytest.raises(ValueError, match="listed twice"):
        parse_urls("http://a:1,http://a:1/")
    with pytest.raises(ValueError, match="base URL"):
        Client(" , ")


def test_chunks_spread_over_replicas_and_each_is_reported():
    a, b = Replica(delay=0.02), Replica(delay=0.02)
    cells = _cells(60)
    with Replicas(a, b).client(chunk_size=3, max_concurrency=2) as client:
        result = client.embed(cells, GENES, model=MODEL, layers=[0, 4])
        report = client.last_run
    np.testing.assert_array_equal(result[4][:, 0], _expected_first_column(cells))
    assert a.answered + b.answered == 20
    assert min(a.answered, b.answered) >= 5  # least outstanding requests: both kept busy
    assert max(a.max_in_flight, b.max_in_flight) <= 2  # max_concurrency is per replica
    by_url = {r.url: r for r in report.replicas}
    assert by_url["http://svc0:3000"].cells == 3 * a.answered
    assert by_url["http://svc1:3000"].cells == 3 * b.answered
    assert report.cells == 60 and all(r.cells_per_s > 0 for r in report.replicas)


def test_a_replica_stopped_mid_run_still_gives_every_cell_once_in_order(tmp_path):
    a, b = Replica(stop_after=3, delay=0.01), Replica(delay=0.01)
    cells = _cells(60)
    with Replicas(a, b).client(chunk_size=3, max_concurrency=2) as client:
        handle = client.embed(cells, GENES, model=MODEL, layers=[0, 2], out=tmp_path / "l.zarr")
        report = client.last_run
    assert handle.complete
    assert a.answered + b.answered == 20  # every chunk answered once: none lost, none twice
    assert a.answered == 3
    for k in (0, 2):
        column = handle.to_numpy(k)
        np.testing.assert_array_equal(column[:, 0], _expected_first_column(cells))
        np.testing.assert_array_equal(column[:, 1], np.full(60, float(k)))
    store = read_store(tmp_path / "l.zarr")
    assert store.done_chunks() == set(range(20))
    by_url = {r.url: r for r in report.replicas}
    assert by_url["http://svc0:3000"].failures >= 1
    assert by_url["http://svc0:3000"].taken_out >= 1
    assert by_url["http://svc1:3000"].cells == 60 - 9


def test_a_replica_comes_back_in_after_its_health_check():
    a, b = Replica(stop_after=2, delay=0.005), Replica(delay=0.005)
    restarted = threading.Event()
    original = b.__call__

    def b_restarts_a(request):
        response = original(request)
        if b.answered == 8 and not restarted.is_set():
            a.stopped = False  # the replica is back
            restarted.set()
        return response

    cells = _cells(90)
    replicas = Replicas(a, b)
    replicas.fakes["svc1"] = b_restarts_a  # route through the wrapper
    with replicas.client(chunk_size=3, max_concurrency=1) as client:
        client._replicas.first_probe_interval = 0.0  # probe at once (tests must not wait)
        result = client.embed(cells, GENES, model=MODEL, layers=0)
    np.testing.assert_array_equal(result[0][:, 0], _expected_first_column(cells))
    assert restarted.is_set()
    assert a.answered + b.answered == 30
    assert a.answered > 2  # it was given chunks again once back
    assert "/readyz" in a.paths_after_stop  # it was health-checked while out


def test_a_replica_serving_other_weights_is_left_out(caplog):
    a, b = Replica(), Replica(checkpoint_digest="sha256:other")
    cells = _cells(30)
    with (
        caplog.at_level(logging.WARNING, logger="scstrata_client"),
        Replicas(a, b).client(chunk_size=3) as client,
    ):
        result = client.embed(cells, GENES, model=MODEL, layers=0)
    np.testing.assert_array_equal(result[0][:, 0], _expected_first_column(cells))
    assert (a.answered, b.answered) == (10, 0)
    assert "serves other models or weights" in caplog.text


def test_with_every_replica_down_the_run_fails_after_its_retries():
    a, b = Replica(), Replica()
    a.stopped = b.stopped = True
    client = Replicas(a, b).client(chunk_size=3, max_retries=2)
    with client, pytest.raises(TransportError):
        client.embed(_cells(6), GENES, model=MODEL, layers=0)


def test_async_client_with_a_stopped_replica(tmp_path):
    a, b = Replica(stop_after=2), Replica()
    replicas = Replicas(a, b)
    cells = _cells(45)

    async def run():
        client = AsyncClient(
            replicas.urls, transport=httpx.MockTransport(replicas), cache=False, chunk_size=3
        )
        client._sleep = lambda delay: None
        async with client:
            handle = await client.embed(cells, GENES, model=MODEL, layers=1, out=tmp_path / "a")
            return handle, client.last_run

    handle, report = asyncio.run(run())
    np.testing.assert_array_equal(handle.to_numpy(1)[:, 0], _expected_first_column(cells))
    assert a.answered + b.answered == 15 and a.answered == 2
    assert sum(r.cells for r in report.replicas) == 45
