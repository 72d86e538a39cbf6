"""Dask sweep throughput: cells/s with 1 and 2 service replicas and 1 and 2 Dask workers.

Every configuration embeds the same cells into a fresh store through
``scstrata_client.distributed.embed_on_dask`` (a LocalCluster of worker processes, replicas
on loopback), in one run, so the ratios compare. By default the replicas' forward passes are
simulated (bench/simulated_accelerator: a sleep of tokens / rate, no CPU, one accelerator per
replica), because on a 2-core machine real compute in two replicas only shares the same two
cores; ``--real`` runs the tiny model for real instead. What is measured either way is the
sweep's own machinery: chunks planned, shipped to workers, sent to the least busy replica,
written to zarr, one progress count.

    python bench/distributed.py                 # simulated accelerator, 4,096 cells
    python bench/distributed.py --real          # real CPU compute (expect no gain here)
"""

# ruff: noqa: E402  (the imports wait for sys.path to lose this script's folder, see below)
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This script shares the Dask package's name: import the package, not the script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
from distributed import Client as DaskClient
from distributed import LocalCluster

sys.path.append(str(HERE))
from common import synthetic_cells

from scstrata_client.distributed import embed_on_dask
from scstrata_service.families import scfoundation
from scstrata_service.families.scfoundation.fabricate import fabricate_checkpoint
from scstrata_service.launcher import running_service

SIMULATOR = Path(__file__).parent / "simulated_accelerator"
CONFIGS = [(1, 1), (2, 1), (1, 2), (2, 2)]  # (replicas, Dask workers)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4096)
    parser.add_argument("--median", type=int, default=500, help="median expressed genes")
    parser.add_argument("--rate", type=float, default=2.5e5, help="simulated tokens/s per replica")
    parser.add_argument("--real", action="store_true", help="real CPU compute, no simulation")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--chunks-per-task", type=int, default=3)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    checkpoint = fabricate_checkpoint(work / "ckpt", hidden=32, n_layers=2, n_heads=4)
    backend = scfoundation.load("bench", checkpoint, device="cpu")
    counts, genes = synthetic_cells(
        backend.tokenizer.vocabulary, args.cells, args.median, 100, 3 * args.median, seed=3
    )
    tokens = int(backend.tokenize(counts, genes, {}).offsets[-1])
    env = {"SCSTRATA_MAX_TOKENS": str(1 << 16)}
    if not args.real:
        path = os.pathsep.join(filter(None, [str(SIMULATOR), os.environ.get("PYTHONPATH")]))
        env.update(PYTHONPATH=path, SCSTRATA_SIMULATED_TOKENS_PER_S=str(args.rate))
    rows = []
    with contextlib.ExitStack() as stack:
        spec = [f"bench=scfoundation:{checkpoint.parent}"]
        with ThreadPoolExecutor(2) as pool:
            urls = list(
                pool.map(lambda _: stack.enter_context(running_service(spec, env=env)), range(2))
            )
        cluster = stack.enter_context(
            LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None)
        )
        client = stack.enter_context(DaskClient(cluster))
        for n_workers in (1, 2):
            cluster.scale(n_workers)
            client.wait_for_workers(n_workers, timeout=120)
            # warm-up: every worker imports the client and opens its connections
            sweep(client, urls, counts[:512], genes, work / f"warm-{n_workers}.zarr", args)
            for replicas, workers in CONFIGS:
                if workers != n_workers:
                    continue
                out = work / f"r{replicas}-w{workers}.zarr"
                started = time.perf_counter()
                sweep(client, urls[:replicas], counts, genes, out, args)
                seconds = time.perf_counter() - started
                row = {
                    "replicas": replicas,
                    "dask_workers": workers,
                    "seconds": round(seconds, 2),
                    "cells_per_s": round(args.cells / seconds, 1),
                }
                if not args.real:
                    # the accelerators' own limit: every replica busy all the time
                    ceiling = replicas * args.cells * args.rate / tokens
                    row["share_of_accelerators"] = round(row["cells_per_s"] / ceiling, 3)
                rows.append(row)
                print(json.dumps(rows[-1]), file=sys.stderr)
    base = rows[0]["cells_per_s"]
    for row in rows:
        row["vs_1_replica_1_worker"] = round(row["cells_per_s"] / base, 2)
    simulated = f"simulated, {args.rate:g} tokens/s per replica"
    report = {
        "cells": args.cells,
        "tokens": tokens,
        "median_genes": args.median,
        "accelerator": "real CPU" if args.real else simulated,
        "cpu_cores": os.cpu_count(),
        "configs": rows,
    }
    print(json.dumps(report, indent=2))
    return report


def sweep(client: DaskClient, urls: list[str], counts, genes, out: Path, args) -> None:
    embed_on_dask(
        client,
        counts,
        genes,
        model="bench",
        out=out,
        urls=urls,
        layers="all",
        chunk_size=args.chunk_size,
        chunks_per_task=args.chunks_per_task,
        progress=False,
    )


if __name__ == "__main__":
    main()
