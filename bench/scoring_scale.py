"""Time and peak memory of each step of trajectory scoring at 10k, 30k and 100k cells.

One process runs every size (pynndescent is compiled once, in an untimed warm-up). Per step it
prints the wall time, the CPU time of the process (what to compare on a shared host, where wall
time depends on the neighbours' load) and the peak RSS above the step's start (sampled every
5 ms), and at the end the log-log slope of CPU time against cells between sizes (1 = linear,
2 = quadratic). Threads: ``SCSTRATA_THREADS`` as in scoring (``threads.apply_threads``).

Steps, as a sweep runs them per representation (``trajectory_evidence`` + bootstrap):
``reference_pca`` (log-normalise, HVGs, PCA: once per data set), ``knn_<rep>`` (one neighbour
search, ``auto`` method), ``dpt_<rep>`` (scanpy's diffusion map and DPT on that graph),
``diffmap_eigen`` (the part of that step spent in the diffusion map's eigensolver, ARPACK,
with its count of matrix-vector products), ``metrics`` (every statistic once on all cells:
overlap, label distances, Spearman correlations), ``bootstrap`` (every statistic on
``--n-boot`` resamples), and with ``--exact`` the exact search the scorer used before
(quadratic), for comparison. ``knn_expression`` searches the sparse expression baseline
(exact up to 10,000 cells, then in its 100-component PCA, which the step includes).
``--time-cap`` starts no new size once that many seconds have passed.

    python bench/scoring_scale.py --sizes 10000,30000,100000 --dims 32
"""

from __future__ import annotations

import argparse
import gc
import itertools
import resource
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import scanpy.neighbors

from scstrata_scoring.baselines import expression_matrix, hvg_pca, log_normalise
from scstrata_scoring.cli import read_genes
from scstrata_scoring.neighbours import label_distances, nearest_neighbours, overlap_of_neighbours
from scstrata_scoring.resample import BootstrapDraws
from scstrata_scoring.simulate import simulate_trajectory
from scstrata_scoring.threads import apply_threads
from scstrata_scoring.trajectory import (
    TrajectoryEvidence,
    TrajectoryReference,
    _dpt,
    root_cell,
    time_values,
    trajectory_statistics,
)

GENES = Path(__file__).resolve().parents[1] / (
    "service/src/scstrata_service/data/OS_scRNA_gene_index.19264.tsv"
)
PAGE = resource.getpagesize()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRss:
    """Highest RSS seen while the block runs, sampled by a thread every 5 ms."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def measure(rows: list, size: int, step: str, fn: Callable[[], object]):
    gc.collect()
    with PeakRss() as mem:
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    rows.append((size, step, cpu, (mem.peak - mem.start) / 2**20))
    print(
        f"{size:>8} {step:<26} wall {seconds:8.2f} s  cpu {cpu:8.2f} s  "
        f"peak +{rows[-1][3]:8.1f} MiB",
        flush=True,
    )
    return out


class EigenTimer:
    """CPU time and matrix-vector products of scanpy's diffusion-map eigensolve, per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []
        self._original = scanpy.neighbors.Neighbors.compute_eigen
        timer = self

        def compute_eigen(neighbours, *args, **kwargs):
            matrix = neighbours._transitions_sym
            count = [0]
            original_dot = type(matrix)._matmul_vector

            def counted(self_, other):
                count[0] += 1
                return original_dot(self_, other)

            type(matrix)._matmul_vector = counted
            cpu = time.process_time()
            try:
                return timer._original(neighbours, *args, **kwargs)
            finally:
                timer.calls.append((time.process_time() - cpu, count[0]))
                type(matrix)._matmul_vector = original_dot

        scanpy.neighbors.Neighbors.compute_eigen = compute_eigen


EIGEN = EigenTimer()


def run_size(n: int, args: argparse.Namespace, genes: list[str], rows: list) -> None:
    adata = simulate_trajectory(genes, n_cells=n, n_expressed=args.expressed_genes, seed=0)
    rng = np.random.default_rng(0)
    time_ = time_values(adata.obs["time"])
    root = root_cell(adata.obs["time"])
    lognorm = log_normalise(adata)
    pca = measure(rows, n, "reference_pca", lambda: hvg_pca(lognorm))
    # A layer: the PCA lifted to --dims dimensions plus noise, float32 as the client returns.
    lift = rng.normal(size=(pca.shape[1], args.dims)) / np.sqrt(pca.shape[1])
    layer = (pca @ lift + rng.normal(0, 0.5, (n, args.dims))).astype(np.float32)
    reps = {"pca": pca, f"layer{args.dims}": layer, "expression": expression_matrix(lognorm)}
    graphs = {}
    if n > args.expression_max:
        del reps["expression"]
    for name, rep in reps.items():
        graphs[name] = measure(rows, n, f"knn_{name}", lambda rep=rep: nearest_neighbours(rep, 30))
        measure(rows, n, f"dpt_{name}", lambda rep=rep, g=graphs[name]: _dpt(rep, root, 30, g))
        cpu, products = EIGEN.calls[-1]
        rows.append((n, f"diffmap_eigen_{name}", cpu, float("nan")))
        print(f"{n:>8} {'diffmap_eigen_' + name:<26} cpu {cpu:8.2f} s  ({products} products)")
        if args.exact and n <= args.exact_max:
            measure(
                rows, n, f"exact_knn_{name}", partial(nearest_neighbours, rep, 30, method="exact")
            )
    ref_pt = _dpt(pca, root, 30, graphs["pca"])
    ref = TrajectoryReference(ref_pt, root, pca, time_, graphs["pca"].first(30))
    nn = graphs[f"layer{args.dims}"]
    evidence = TrajectoryEvidence(
        _dpt(layer, root, 30, nn),
        overlap_of_neighbours(nn.first(30), ref.knn),
        label_distances(nn.first(15), time_),
    )
    measure(rows, n, "metrics", lambda: trajectory_statistics(evidence, ref))
    draws = BootstrapDraws(n, args.n_boot, (0, 0))
    measure(rows, n, "bootstrap", lambda: draws.map(partial(trajectory_statistics, evidence, ref)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--dims", type=int, default=32, help="dimensions of the layer")
    parser.add_argument("--expressed-genes", type=int, default=400, help="~330 per cell")
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--exact", action="store_true", help="also time exact search")
    parser.add_argument("--exact-max", type=int, default=30000, help="largest size for --exact")
    parser.add_argument(
        "--expression-max", type=int, default=100000, help="largest size for the expression steps"
    )
    parser.add_argument("--time-cap", type=float, default=0, help="seconds; 0: no cap")
    args = parser.parse_args()
    genes = read_genes(GENES)
    print(f"threads: {apply_threads()}", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    warm = np.random.default_rng(0).normal(size=(200, 20)).astype(np.float32)
    # numba compiles pynndescent and UMAP's connectivities on first use: untimed warm-up
    _dpt(warm, 0, 6, nearest_neighbours(warm, 5, method="approximate"))
    rows: list = []
    start = time.perf_counter()
    for n in sizes:
        if args.time_cap and time.perf_counter() - start > args.time_cap:
            print(f"time cap of {args.time_cap:.0f} s reached: {n} cells not run", flush=True)
            break
        run_size(n, args, genes, rows)
    print("\nslope of log CPU time against log cells (1 = linear, 2 = quadratic):")
    steps = list(dict.fromkeys(step for _, step, _, _ in rows))
    times = {(size, step): sec for size, step, sec, _ in rows}
    for step in steps:
        have = [n for n in sizes if (n, step) in times]
        slopes = [
            (a, b, np.log(times[b, step] / times[a, step]) / np.log(b / a))
            for a, b in itertools.pairwise(have)
        ]
        pairs = [f"{a // 1000}k->{b // 1000}k {slope:.2f}" for a, b, slope in slopes]
        print(f"  {step:<26} {'  '.join(pairs)}")


if __name__ == "__main__":
    main()
