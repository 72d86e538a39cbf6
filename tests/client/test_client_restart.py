"""A server killed and restarted in the middle of a run: every cell comes back exactly once.

The server demands a bearer token, so the same run also covers auth against the real thing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import httpx
import numpy as np
import psutil
import pytest
from client_fakes import RecordingTransport

from scstrata_client import Client, TransportError, Unauthorized
from scstrata_service.launcher import free_port, running_service

from helpers import make_cells

TOL = dict(rtol=1e-5, atol=1e-5)


def _kill_server_on(port: int) -> None:
    """SIGKILL the server listening on ``port``: a crash, not a clean shutdown.

    BentoML runs an arbiter (the process the launcher started, a child of this test) and a
    worker in a session of its own that holds the listening socket; both must go, or the
    arbiter respawns the worker. Only a server started by this very process is touched.
    """
    listeners = [
        psutil.Process(c.pid)
        for c in psutil.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
    ]
    assert listeners, f"nothing listens on port {port}"
    arbiters = {p if p.ppid() == os.getpid() else p.parent() for p in listeners}
    for arbiter in arbiters:
        assert arbiter.ppid() == os.getpid(), "refusing to kill a server this test did not start"
        victims = [arbiter, *arbiter.children(recursive=True)]
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=30)


def test_server_restarted_mid_run_every_cell_embedded_exactly_once(
    tiny_checkpoint, tiny_backend, vocabulary, tmp_path
):
    models = [f"scf=scfoundation:{tiny_checkpoint.parent}"]
    env = {"SCSTRATA_TOKEN": "restart-test-token"}
    port = free_port()
    counts, genes = make_cells(vocabulary, n_cells=160, n_genes=300, seed=31)
    n_chunks = 160 // 8

    stack = contextlib.ExitStack()
    url = stack.enter_context(running_service(models, env=env, port=port))
    halfway = threading.Event()
    restarted = threading.Event()
    failures: list[BaseException] = []

    def on_reply(count: int) -> None:
        if count == 5:
            halfway.set()

    transport = RecordingTransport(on_reply=on_reply)

    def crash_and_restart() -> None:
        try:
            assert halfway.wait(timeout=120), "the run never got going"
            _kill_server_on(port)
            stack.close()  # reaps the killed server
            stack.enter_context(running_service(models, env=env, port=port))
        except BaseException as exc:
            failures.append(exc)
            # Without a server the client would retry for minutes: make it give up now.
            transport.failures = {
                n: httpx.UnsupportedProtocol("restart failed") for n in range(999)
            }
        finally:
            restarted.set()

    chaos = threading.Thread(target=crash_and_restart, daemon=True)
    chaos.start()
    try:
        with Client(
            url,
            token="restart-test-token",
            chunk_size=8,
            max_concurrency=2,
            max_retries=12,
            backoff=0.2,
            cache_dir=tmp_path,
            transport=transport,
        ) as client:
            try:
                result = client.embed(counts, genes, model="scf", layers="all", pooling="mean")
            except TransportError:
                assert not failures, f"the server could not be restarted: {failures[0]!r}"
                raise
        restarted.wait(timeout=300)
        assert not failures, f"the server could not be restarted: {failures[0]!r}"
        with Client(url, cache=False) as anonymous, pytest.raises(Unauthorized) as info:
            anonymous.embed(counts[:2], genes, model="scf", layers=0)
        assert info.value.status_code == 401 and "bearer token" in str(info.value)
    finally:
        chaos.join(timeout=300)
        stack.close()

    # The server really went away mid-run, and the client kept going.
    assert transport.errors, "no request failed: the server was not killed mid-run"
    assert transport.embed_replies >= n_chunks
    tokens = tiny_backend.tokenize(counts, genes, {})
    expected = tiny_backend.embed(tokens, [0, 1, 2, 3], ["mean"])["mean"]
    assert sorted(result) == [0, 1, 2, 3]
    for k in range(4):
        assert result[k].shape == (160, 32)  # no cell dropped or duplicated ...
        np.testing.assert_allclose(result[k], expected[k], **TOL)  # ... or out of place
    # Distinct cells have distinct embeddings, so row i can only be cell i's.
    assert len(np.unique(result[3].round(4), axis=0)) == 160
