"""Connections and processes against a real server on loopback: slow connections past the
worker's file limit, heads and bodies that never finish, a client that leaves before its
forward pass, and a main process killed with SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import threading
import time

import httpx
import psutil
import pytest

from scstrata_service.launcher import running_service

from helpers import embed_item, make_cells, server_processes

FILE_LIMIT = 384  # the worker's soft RLIMIT_NOFILE, with a listen backlog of 96:
CAP = FILE_LIMIT - 3 * 96 - 64  # its connection cap (connections.py), 32


@contextlib.contextmanager
def file_limit(soft: int):
    """Processes started inside inherit ``soft`` as their file limit."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@pytest.fixture(scope="module")
def capped(tiny_checkpoint):
    """A server whose worker may open FILE_LIMIT files, with short head and body timeouts and
    one dispatch at a time; yields its URL and worker process, the same throughout."""
    env = {
        "SCSTRATA_BACKLOG": "96",
        "SCSTRATA_HEADER_TIMEOUT_S": "3",
        "SCSTRATA_READ_TIMEOUT_S": "6",
        "SCSTRATA_DISPATCHES": "1",
    }
    started = running_service([f"scf=scfoundation:{tiny_checkpoint.parent}"], env=env)
    with file_limit(FILE_LIMIT):
        url = started.__enter__()
    try:
        main, worker = server_processes(url)
        assert worker.rlimit(psutil.RLIMIT_NOFILE)[0] == FILE_LIMIT
        yield url, worker
        assert [p.pid for p in server_processes(url)] == [main.pid, worker.pid]
    finally:
        started.__exit__(None, None, None)


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def livez_seconds(url: str) -> float:
    start = time.perf_counter()
    assert httpx.get(f"{url}/livez", timeout=5).status_code == 200
    return time.perf_counter() - start


def test_slow_connections_past_the_file_limit_leave_the_worker_serving(capped):
    url, worker = capped
    silent = [socket.create_connection(address(url)) for _ in range(2 * FILE_LIMIT)]
    slow = []
    for _ in range(20):  # heads that never finish
        sock = socket.create_connection(address(url))
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        slow.append(sock)
    try:
        time.sleep(0.5)
        # the oldest waiting connections were closed to keep the worker at its cap
        assert worker.num_fds() < FILE_LIMIT
        assert livez_seconds(url) < 2
        open_ = [s for s in silent + slow if not closed_by_server(s)]
        assert len(open_) <= CAP
        assert sum(closed_by_server(s) for s in silent) >= len(silent) - CAP
    finally:
        for sock in silent + slow:
            sock.close()


def test_a_request_head_that_never_finishes_gets_408(capped):
    url, _ = capped
    with socket.create_connection(address(url), timeout=15) as sock:
        sock.sendall(b"GET /models HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n")
        start = time.perf_counter()
        reply = sock.recv(4096)
        seconds = time.perf_counter() - start
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert b"SCSTRATA_HEADER_TIMEOUT_S" in reply and b"connection: close" in reply
    assert 2.5 < seconds < 8  # the head timeout is 3 s


def test_past_the_cap_with_every_connection_busy_a_new_one_gets_503(capped):
    url, _ = capped
    head = (
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"items": '
    )
    busy = []
    try:
        for _ in range(CAP):  # heads in, bodies never finished: each one a request in flight
            sock = socket.create_connection(address(url))
            sock.sendall(head)
            busy.append(sock)
        time.sleep(0.5)
        with socket.create_connection(address(url), timeout=5) as extra:
            extra.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = extra.recv(4096)
        assert reply.startswith(b"HTTP/1.1 503 "), reply
        assert b"retry-after: " in reply and b"SCSTRATA_MAX_CONNECTIONS" in reply
    finally:
        for sock in busy:
            sock.close()
    # their clients left mid-body: each request is over, none held until a timeout
    deadline = time.monotonic() + 10
    while metric(url, IN_PROGRESS) != 0:
        assert time.monotonic() < deadline, "requests whose clients left are still in progress"
        time.sleep(0.1)
    assert livez_seconds(url) < 2


IN_PROGRESS = 'bentoml_service_request_in_progress{endpoint="/embed"'


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_a_request_whose_client_left_is_not_computed(capped, vocabulary):
    """One dispatch at a time: while a long request computes, a second is sent and its socket
    closed; its cells never reach a forward pass."""
    url, _ = capped
    long_counts, genes = make_cells(vocabulary, n_cells=200, n_genes=2000, seed=97)
    left_counts, _ = make_cells(vocabulary, n_cells=7, n_genes=2000, seed=98)
    long_body = {"items": [embed_item(long_counts, genes, layers="all")]}
    left_body = json.dumps({"items": [embed_item(left_counts, genes, layers="all")]}).encode()
    embedded = metric(url, "scstrata_cells_embedded_total")
    computed = metric(url, "scstrata_cells_per_pass_sum")
    replies = []
    long_request = threading.Thread(
        target=lambda: replies.append(httpx.post(f"{url}/embed", json=long_body, timeout=300))
    )
    long_request.start()

    def queued_reaches(cells: int) -> None:
        deadline = time.monotonic() + 60
        while metric(url, "scstrata_queued_cells") != cells:
            assert time.monotonic() < deadline, f"{cells} cells never queued"
            time.sleep(0.05)

    queued_reaches(200)
    time.sleep(1.0)  # its dispatch has started: the next one waits for it
    with socket.create_connection(address(url)) as sock:
        sock.sendall(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(left_body)}\r\n\r\n".encode()
            + left_body
        )
        queued_reaches(207)
    assert long_request.is_alive(), "the long request ended before the other one left"
    long_request.join()
    assert replies[0].status_code == 200, replies[0].text
    queued_reaches(0)  # the request that left was answered (to nobody) and released
    assert metric(url, "scstrata_cells_embedded_total") - embedded == 200
    assert metric(url, "scstrata_cells_per_pass_sum") - computed == 200


def test_killing_the_main_process_frees_the_port(tiny_checkpoint):
    """SIGKILL leaves BentoML's main process no chance to stop its worker: the worker sees its
    parent gone and stops, and the port is free again."""
    with running_service([f"scf=scfoundation:{tiny_checkpoint.parent}"]) as url:
        main, *workers = server_processes(url)
        os.kill(main.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers):
            assert time.monotonic() < deadline, "the orphaned worker is still running"
            time.sleep(0.2)
        with socket.socket() as sock:
            sock.bind(address(url))  # free: nothing listens there any more
