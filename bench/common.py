"""Shared pieces of the benchmark scripts: synthetic cells, FLOP counts, timers, peak."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch


def synthetic_cells(
    vocabulary: list[str], n_cells: int, median_genes: int, low: int, high: int, seed: int = 0
) -> tuple[sp.csr_matrix, list[str]]:
    """Raw counts over the whole vocabulary; expressed genes per cell ~ log-normal(median),
    clipped to [low, high] (the distribution of serving-notes.md, scaled by the caller)."""
    rng = np.random.default_rng(seed)
    n_expressed = np.clip(rng.lognormal(np.log(median_genes), 0.6, n_cells), low, high).astype(int)
    rows, cols, vals = [], [], []
    for i, n in enumerate(n_expressed):
        genes = np.sort(rng.choice(len(vocabulary), n, replace=False))
        rows.append(np.full(n, i))
        cols.append(genes)
        vals.append(rng.geometric(0.3, n).astype(np.float64))  # counts >= 1
    counts = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_cells, len(vocabulary)),
    )
    return counts, list(vocabulary)


def flops_per_cell(tokens: np.ndarray, hidden: int, blocks: int) -> np.ndarray:
    """Encoder FLOPs per cell: blocks x (24 n d^2 + 4 n^2 d) for a cell of n tokens."""
    n = tokens.astype(np.float64)
    return blocks * (24 * n * hidden**2 + 4 * n**2 * hidden)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeat: int = 3) -> float:
    """Fastest of ``repeat`` runs after one warm-up, in seconds."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak_tflops(device: torch.device) -> tuple[float, str]:
    """Measured dense matmul throughput: bf16 on CUDA, fp32 on CPU (its native path)."""
    if device.type == "cuda":
        size, dtype, label = 8192, torch.bfloat16, "bf16"
    else:
        size, dtype, label = 1024, torch.float32, "fp32"
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 3

    def run() -> None:
        for _ in range(reps):
            a @ b

    seconds = best_time(run, device)
    return 2 * size**3 * reps / seconds / 1e12, label
