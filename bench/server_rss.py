"""Does the server's memory grow with the requests it serves? RSS sampled over a bounded loop.

Starts the service on loopback with a fabricated tiny scFoundation checkpoint (32 wide,
3 blocks), sends ``--requests`` embed requests one at a time through the client (one chunk
per request, cache off), and every ``--every`` requests reads the resident memory of the
server's process tree (psutil, every child process of this script). It prints the samples
and the growth per request over the first and the second half of the loop: a leak keeps the
same slope, an allocator or a cache that fills up shows a slope that falls towards 0.

The same loop also runs in-process (the engine's tokenize + embed, no HTTP) for comparison.
``--malloc-arena-max N`` starts the server with glibc's ``MALLOC_ARENA_MAX=N`` (glibc gives
each thread that allocates its own arena, up to 8 per core, and returns freed memory of an
arena to the system only from its top).

    python bench/server_rss.py --requests 400 --every 25
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from scstrata_client import Client
from scstrata_service.families import scfoundation
from scstrata_service.families.scfoundation.checkpoint import load_vocabulary
from scstrata_service.families.scfoundation.fabricate import fabricate_checkpoint
from scstrata_service.launcher import running_service
from scstrata_service.runtime.device import apply_threads

MIB = 2**20


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of ``root``'s descendants (the server's main process and workers)."""
    total = 0
    for proc in root.children(recursive=True):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:  # a process that ended between the listing and the read
            continue
    return total


def cells(vocabulary: list[str], n_cells: int, n_genes: int, seed: int):
    rng = np.random.default_rng(seed)
    genes = list(rng.choice(vocabulary, n_genes, replace=False))
    counts = rng.poisson(1.0, (n_cells, n_genes)).astype(np.float32)
    return counts, genes


def growth(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """MiB per request over the first and the second half of the samples (least squares)."""
    half = len(samples) // 2
    slopes = []
    for part in (samples[: half + 1], samples[half:]):
        x, y = np.array(part).T
        slopes.append(float(np.polyfit(x, y, 1)[0]))
    return slopes[0], slopes[1]


def report(label: str, samples: list[tuple[int, float]]) -> None:
    first, second = growth(samples)
    print(f"\n{label}: RSS (MiB) after n requests")
    print("  " + "  ".join(f"{n}:{mib:.1f}" for n, mib in samples))
    print(
        f"  growth: {first * 1024:.0f} KiB/request over the first half, "
        f"{second * 1024:.0f} KiB/request over the second; "
        f"total {samples[-1][1] - samples[0][1]:+.1f} MiB",
        flush=True,
    )


def over_http(args, checkpoint: Path, vocabulary: list[str]) -> list[tuple[int, float]]:
    env = {"SCSTRATA_THREADS": "1"}
    if args.malloc_arena_max:
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    me = psutil.Process()
    samples = []
    with running_service([f"scf=scfoundation:{checkpoint.parent}"], env=env) as url:
        client = Client(url, cache=False, progress=False, transport_format=args.format)
        for i in range(args.requests + 1):
            if i % args.every == 0:
                samples.append((i, tree_rss(me) / MIB))
            if i < args.requests:
                counts, genes = cells(vocabulary, args.cells, args.genes, seed=i)
                client.embed(
                    counts,
                    genes,
                    model="scf",
                    layers="all",
                    pooling=args.pooling,
                    min_known_genes=0,  # a small gene panel, on purpose: tiny requests
                )
        client.close()
    return samples


def in_process(args, checkpoint: Path, vocabulary: list[str]) -> list[tuple[int, float]]:
    apply_threads(1)  # as the server runs (SCSTRATA_THREADS=1)
    backend = scfoundation.load("scf", checkpoint)
    me = psutil.Process()
    samples = []
    layers = list(range(backend.card.n_layers + 1))
    for i in range(args.requests + 1):
        if i % args.every == 0:
            gc.collect()
            samples.append((i, me.memory_info().rss / MIB))
        if i < args.requests:
            counts, genes = cells(vocabulary, args.cells, args.genes, seed=i)
            backend.embed(backend.tokenize(counts, genes, {}), layers, [args.pooling])
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--every", type=int, default=25, help="sample RSS every N requests")
    parser.add_argument("--cells", type=int, default=8, help="cells per request")
    parser.add_argument("--genes", type=int, default=200, help="genes per request")
    parser.add_argument("--pooling", default="official")
    parser.add_argument("--format", default="auto", choices=["auto", "json", "npz"])
    parser.add_argument("--malloc-arena-max", type=int, default=0, help="0: glibc's default")
    parser.add_argument("--skip-in-process", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="server-rss-"))
    checkpoint = fabricate_checkpoint(work, hidden=32, n_layers=3, n_heads=4)
    vocabulary = load_vocabulary(checkpoint)
    os.environ.setdefault("SCSTRATA_CACHE_DIR", str(work / "cache"))
    start = time.perf_counter()
    report(
        f"server through HTTP ({args.requests} requests of {args.cells} cells, "
        f"format {args.format}, MALLOC_ARENA_MAX={args.malloc_arena_max or 'default'})",
        over_http(args, checkpoint, vocabulary),
    )
    if not args.skip_in_process:
        report("engine in-process (tokenize + embed)", in_process(args, checkpoint, vocabulary))
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
