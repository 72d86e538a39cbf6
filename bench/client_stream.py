"""Client memory and wall time, streamed to zarr (``embed(out=...)``) and in memory.

A fake fast service (a bare ASGI app under uvicorn in its own process, speaking the real wire
format: ``GET /models``, ``GET /info``, ``POST /embed`` with ``cells_npz`` in, a raw npz reply
out) stands in for a tiny model (4 layers x ``--dim``), because the real tiny service would
spend the run computing on this shared 2-core box instead of exercising the client. Each
measurement runs the client in a fresh process reading a simulated ``.h5ad``
(``--genes-per-cell`` expressed genes a cell): peak RSS above the process's RSS just before
``embed`` (after imports and, in memory mode, after loading the input), and wall time.

    .venv/bin/python bench/client_stream.py                     # 10k, 100k, 1M streamed
    .venv/bin/python bench/client_stream.py --cells 10000 100000 --memory-cells 100000

Prints one line per run and the ratios measured in this run: streamed peak at the largest size
÷ at the smallest (flat: ~1), and the in-memory peak ÷ the result's bytes (issue 19.3: ~1).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_LAYERS = 3  # layers 0..3
MODEL = "tiny"


# -- the fake service (runs in its own process) -------------------------------------------------


def _card(dim: int) -> dict:
    return {
        "name": MODEL,
        "family": "fake",
        "n_layers": N_LAYERS,
        "poolings": {"official": dim},
        "checkpoint_digest": "sha256:bench",
    }


def serve(port: int, dim: int) -> None:
    import pybase64
    import uvicorn

    models = json.dumps([_card(dim)]).encode()
    info = json.dumps({"features": ["json", "npz", "cells_npz"]}).encode()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/models":
            payload, kind = models, b"application/json"
        elif path == "/info":  # what the client learns the transports from
            payload, kind = info, b"application/json"
        elif path in ("/readyz", "/livez"):
            payload, kind = b'{"status":"ok"}', b"application/json"
        else:
            (item,) = json.loads(body)["items"]
            with np.load(io.BytesIO(pybase64.b64decode(item["cells_npz"]))) as cells:
                n_cells = int(cells["shape"][0])
                totals = np.add.reduceat(cells["data"], cells["indptr"][:-1])
            rows = np.zeros((n_cells, dim), dtype=np.float32)
            rows[:, 0] = totals
            arrays = {}
            for k in range(N_LAYERS + 1):
                rows[:, 1] = k
                arrays[f"layer_{k}"] = rows.copy()
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            payload, kind = buffer.getvalue(), b"application/x-npz"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", kind)]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- one client run (in its own process) -------------------------------------------------------


def _status_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def client_run(url: str, source: str, mode: str, out: str, chunk_size: int) -> None:
    import anndata  # noqa: F401  (imported before the baseline: code, not data)
    import h5py  # noqa: F401
    import zarr  # noqa: F401

    from scstrata_client import Client

    # npz both ways (the fake speaks only that; "auto" picks it for all but small chunks).
    with Client(
        url, chunk_size=chunk_size, cache=False, progress=False, transport_format="npz"
    ) as client:
        client.models()
        X = source
        if mode == "memory":
            import anndata as ad

            X = ad.read_h5ad(source)
        _reset_peak()
        before = _status_bytes("VmRSS")
        start = time.perf_counter()
        if mode == "memory":
            result = client.embed(X, model=MODEL)
            result_bytes = sum(a.nbytes for a in result.values())
        else:
            store = client.embed(X, model=MODEL, out=out)
            assert store.complete
            result_bytes = store.n_cells * (N_LAYERS + 1) * store.spec.dim * 4
        wall = time.perf_counter() - start
        peak = _status_bytes("VmHWM") - before
    print(json.dumps({"wall_s": wall, "peak_bytes": peak, "result_bytes": result_bytes}))


# -- the driver --------------------------------------------------------------------------------


def write_cells(path: Path, n_cells: int, n_genes: int, per_cell: int, seed: int = 0) -> None:
    """A CSR .h5ad of ``n_cells`` with ``per_cell`` expressed genes each (counts 1..9)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    indices = np.sort(rng.integers(0, n_genes, size=(n_cells, per_cell)), axis=1)
    # Duplicates within a row are summed by the client, like any SciPy input.
    data = rng.integers(1, 10, size=n_cells * per_cell).astype(np.float32)
    indptr = np.arange(0, n_cells * per_cell + 1, per_cell, dtype=np.int64)
    X = sp.csr_matrix((data, indices.ravel().astype(np.int32), indptr), shape=(n_cells, n_genes))
    var = pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])
    ad.AnnData(X=X, var=var).write_h5ad(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"the fake service at {url} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--memory-cells", type=int, nargs="*", default=[100_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--genes-per-cell", type=int, default=20)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.dim)
        return
    if args.client:
        url, source, mode, out = args.client
        client_run(url, source, mode, out, args.chunk_size)
        return

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--dim", str(args.dim)]
    )
    runs = []
    try:
        _wait_ready(url)
        with tempfile.TemporaryDirectory(prefix="scstrata-bench-") as tmp:
            sizes = sorted(set(args.cells) | set(args.memory_cells))
            for n in sizes:
                source = Path(tmp) / f"cells{n}.h5ad"
                write_cells(source, n, args.genes, args.genes_per_cell)
                modes = (["stream"] if n in args.cells else []) + (
                    ["memory"] if n in args.memory_cells else []
                )
                for mode in modes:
                    out = Path(tmp) / f"layers{n}.zarr"
                    proc = subprocess.run(
                        [sys.executable, __file__, "--client", url, str(source), mode, str(out),
                         "--chunk-size", str(args.chunk_size)],
                        capture_output=True, text=True,
                        env=dict(os.environ, PYTHONWARNINGS="ignore"),
                    )  # fmt: skip
                    if proc.returncode != 0:
                        raise SystemExit(f"{mode} run at {n} cells failed:\n{proc.stderr}")
                    figures = json.loads(proc.stdout.strip().splitlines()[-1])
                    runs.append({"cells": n, "mode": mode, **figures})
                    print(
                        f"{mode:>6} {n:>9,} cells: peak +{figures['peak_bytes'] / 2**20:7.1f} MiB"
                        f" (result {figures['result_bytes'] / 2**20:7.1f} MiB), "
                        f"{figures['wall_s']:6.1f} s, {n / figures['wall_s']:8,.0f} cells/s",
                        flush=True,
                    )
    finally:
        server.terminate()
        server.wait(timeout=10)
    streamed = [r for r in runs if r["mode"] == "stream"]
    if len(streamed) > 1:
        small, large = streamed[0], streamed[-1]
        print(
            f"streamed peak at {large['cells']:,} / at {small['cells']:,} cells: "
            f"{large['peak_bytes'] / small['peak_bytes']:.2f} "
            f"({large['cells'] // small['cells']}x the cells)"
        )
    for r in runs:
        if r["mode"] == "memory":
            print(
                f"in-memory peak / result at {r['cells']:,} cells: "
                f"{r['peak_bytes'] / r['result_bytes']:.2f}"
            )


if __name__ == "__main__":
    main()
