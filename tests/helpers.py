"""Test data builders shared by the service, client and end-to-end tests."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# The GPU tests run every packed attention kernel, and the compiled blocks on the direct
# varlen kernel: (attention, compile_blocks).
GPU_KERNELS = [
    ("nested", False),
    ("per_cell", False),
    ("varlen", False),
    ("cudnn", False),
    ("varlen", True),
]
GPU_KERNEL_IDS = ["nested", "per_cell", "varlen", "cudnn", "varlen-compiled"]


def make_cells(vocabulary: list[str], n_cells: int = 12, n_genes: int = 400, seed: int = 0):
    """Raw counts over a shuffled vocabulary subset plus two unknown genes; uneven depths."""
    rng = np.random.default_rng(seed)
    genes = list(rng.choice(vocabulary, n_genes, replace=False)) + ["NOT_A_GENE", "ALSO_NOT"]
    density = rng.uniform(0.05, 0.5, size=(n_cells, 1))
    dense = rng.poisson(3.0, (n_cells, len(genes))) * (rng.random((n_cells, len(genes))) < density)
    dense[:, 0] += 2  # every cell has a known gene and a total above 1 (S token > 0)
    return sp.csr_matrix(dense.astype(np.float64)), genes


def metric_total(url: str, name: str, headers: dict | None = None) -> float:
    """The sum of a Prometheus series over its labels, as the server's /metrics shows it."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10, headers=headers).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def embed_item(counts, genes, **fields) -> dict:
    """A request item exactly as docs/api.md describes it."""
    counts = sp.csr_matrix(counts)
    return {
        "model": "scf",
        "genes": list(genes),
        "cells": {
            "data": counts.data.tolist(),
            "indices": counts.indices.tolist(),
            "indptr": counts.indptr.tolist(),
            "shape": list(counts.shape),
        },
        **fields,
    }


def server_processes(url: str) -> list:
    """The psutil processes of the server listening on the URL's port: BentoML's main process
    and its workers (a crashed worker comes back with a new PID)."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            root = psutil.Process(conn.pid)
            while root.parent() is not None and "scstrata_service" in " ".join(
                root.parent().cmdline()
            ):
                root = root.parent()
            return [root, *root.children(recursive=True)]
    raise RuntimeError(f"no process listens on {port}")


def server_pids(url: str) -> set[int]:
    return {p.pid for p in server_processes(url)}
