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


def poisson_counts(n_cells: int = 3, n_genes: int = 40, seed: int = 0) -> sp.csr_matrix:
    """Dense-ish raw counts (Poisson, mean 2) in which every cell expresses its first gene."""
    rng = np.random.default_rng(seed)
    dense = rng.poisson(2.0, (n_cells, n_genes)).astype(np.float64)
    dense[:, 0] += 1
    return sp.csr_matrix(dense)


def sparse_counts(rng, n_cells: int, n_genes: int, rate: float, density: float) -> sp.csr_matrix:
    """Raw counts (Poisson ``rate``, kept with probability ``density``) in which every cell
    expresses its first gene."""
    dense = rng.poisson(rate, (n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < density)
    dense[:, 0] += 1
    return sp.csr_matrix(dense.astype(np.float64))


# Mistakes every family with a max_length option reports under the named field.
COMMON_INPUT_ERRORS = [
    ("empty cell", "cells"),
    ("unknown option", "options.top_k"),
    ("max_length too small", "options.max_length"),
]


def common_input_error(case: str, counts: sp.csr_matrix) -> tuple[sp.csr_matrix, dict]:
    """The counts and options of a request with one of :data:`COMMON_INPUT_ERRORS`."""
    if case == "empty cell":
        counts = counts.tolil()
        counts[1, :] = 0
        return counts.tocsr(), {}
    if case == "unknown option":
        return counts, {"top_k": 5}
    if case == "max_length too small":
        return counts, {"max_length": 1}
    raise ValueError(f"not a common input error: {case!r}")


def assert_bf16_close(got: dict, want: dict, poolings, layers) -> None:
    """bf16 GPU against fp32 CPU pooled vectors: per vector, relative L2 error below 3% and
    cosine similarity above 0.999."""
    for pooling in poolings:
        for k in layers:
            a, b = got[pooling][k], want[pooling][k]
            relative = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            assert relative.max() < 0.03 and cosine.min() > 0.999, (pooling, k, relative.max())


def assert_served_like_in_process(url, local, model, counts, genes, cases, unmapped) -> None:
    """Every layer of ``/embed`` for each ``(pooling, options)`` case equals the in-process
    embedding of the same model (1e-5), with ``unmapped`` reported."""
    import httpx

    layers = range(local.card.n_layers + 1)
    for pooling, options in cases:
        item = embed_item(
            counts, genes, model=model, layers="all", pooling=pooling, options=options
        )
        reply = httpx.post(f"{url}/embed", json={"items": [item]}, timeout=120)
        assert reply.status_code == 200, reply.text
        (result,) = reply.json()
        assert result["unmapped_genes"] == unmapped
        expected = local.embed(local.tokenize(counts, genes, options), layers, [pooling])
        for k in layers:
            got = np.array(result["layers"][str(k)])
            np.testing.assert_allclose(got, expected[pooling][k], rtol=1e-5, atol=1e-5)


def cpu_and_gpu(family: str, folder, attention: str, compiled: bool):
    """The same checkpoint loaded twice: fp32 on the CPU, and on CUDA with bf16 blocks, the
    given attention kernel and compile setting."""
    import torch

    from scstrata_service.families import load

    cpu = load(family, "m", folder, device="cpu")
    gpu = load(family, "m", folder, attention=attention, compile_blocks=compiled)
    assert gpu.device.type == "cuda" and gpu.policy.compute_dtype == torch.bfloat16
    return cpu, gpu
