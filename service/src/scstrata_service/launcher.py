"""Run `scstrata serve` in the background until it is ready (tests, demo, benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_service(
    models: list[str],
    env: dict | None = None,
    timeout: float = 300.0,
    port: int | None = None,
    extra_args: list[str] | None = None,
) -> Iterator[str]:
    """Yield the base URL of a ready server; stop its whole process group afterwards.

    ``models`` are ``NAME=FAMILY:PATH`` specs. The server's log is kept in a temporary
    BentoML home and shown if the server fails to start.
    """
    port = port or free_port()
    home = tempfile.mkdtemp(prefix="bentoml-home-")
    full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": home, **(env or {})}
    log = Path(home) / "server.log"
    command = [
        sys.executable,
        "-m",
        "scstrata_service.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for model in models:
        command += ["--model", model]
    command += extra_args or []
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {timeout}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
