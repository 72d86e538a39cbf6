"""A layer sweep on Dask: a LocalCluster of 2 worker processes and 2 real service replicas on
loopback, a tiny fabricated model.

The cluster tests (the store equals the single-process result; a killed worker and a stopped
replica cost no cell twice) sweep the issue's 20,000 cells, in 40 chunks of 500 over 10
tasks. Measured on this shared 2-core host at a load of 7-11: 34 s and 23 s for those two
tests, after 118 s of setup (two servers, the cluster and the reference); the module took
309 s, against 346 s with 6,000 cells in chunks of 128 under a similar load (the setup and the
in-process workers' torch dominate it). The other tests (a file input, in-process workers, the
CLI, a refused store) take the first few chunks only: a cell's embedding does not depend on
the others, so their rows of the reference still hold.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anndata as ad
import cloudpickle
import distributed
import numpy as np
import pytest

from scstrata_client import Client
from scstrata_client._cache import digest_card
from scstrata_client.distributed import embed_on_dask
from scstrata_client.store import StoreMismatch, read_store

from helpers import make_cells

N_CELLS = 20_000
CHUNK = 500
CHUNKS_PER_TASK = 4
POOLING = "mean"

# The write counter below is sent to the workers by value (they cannot import this module).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


NOWHERE = "tcp://127.0.0.1:9"  # never contacted: these mistakes are caught before that


def test_replicas_or_a_backend_per_worker_not_both():
    counts = np.ones((2, 2))
    for urls, in_process in ((None, None), (["http://a"], "scfoundation:/m")):
        with pytest.raises(ValueError, match="urls or in_process"):
            embed_on_dask(
                NOWHERE,
                counts,
                ["A", "B"],
                model="m",
                out="x.zarr",
                urls=urls,
                in_process=in_process,
            )


@pytest.mark.parametrize("name", ["chunk_size", "chunks_per_task", "max_concurrency"])
def test_a_size_below_one_names_the_argument(name):
    with pytest.raises(ValueError, match=f"{name}: must be at least 1"):
        embed_on_dask(
            NOWHERE,
            np.ones((2, 2)),
            ["A", "B"],
            model="m",
            out="x.zarr",
            urls="http://a",
            **{name: 0},
        )


def test_a_local_cluster_needs_a_number_of_workers():
    with pytest.raises(ValueError, match="'local:N' takes a number of workers N >= 1, got 'two'"):
        embed_on_dask(
            "local:two", np.ones((2, 2)), ["A", "B"], model="m", out="x.zarr", urls="http://a"
        )


def test_a_missing_counts_layer_is_named_before_anything_runs(tmp_path):
    adata = ad.AnnData(np.ones((2, 2), dtype=np.float32))
    adata.layers["counts"] = adata.X
    adata.write_h5ad(tmp_path / "a.h5ad")
    with pytest.raises(ValueError, match=r"counts_layer: .* no layer 'raw' \(has: counts\)"):
        embed_on_dask(
            NOWHERE,
            tmp_path / "a.h5ad",
            model="m",
            out="x.zarr",
            urls="http://a",
            counts_layer="raw",
        )


def test_the_dask_api_needs_no_torch():
    code = "import sys, scstrata_client.distributed; assert 'torch' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_cli_says_in_process_needs_a_scheduler(tmp_path, capsys):
    from scstrata_client.cli import main

    adata = ad.AnnData(np.ones((2, 2), dtype=np.float32))
    adata.write_h5ad(tmp_path / "a.h5ad")
    code = main(
        [
            "embed",
            str(tmp_path / "a.h5ad"),
            "-o",
            str(tmp_path / "o.zarr"),
            "--model",
            "m",
            "--in-process",
            "scfoundation:/m",
        ]
    )
    assert code == 2 and "--in-process needs --scheduler" in capsys.readouterr().err


class CountWrites(distributed.WorkerPlugin):
    """On every worker, including ones the nanny restarts: log each chunk write that completed
    (one line per ``EmbeddingStore.write_chunk`` that returned) to a file per process."""

    def __init__(self, folder: str):
        self.folder = folder

    def setup(self, worker) -> None:
        from scstrata_client import store

        original = store.EmbeddingStore.write_chunk
        if getattr(original, "counted", False):
            return
        log = Path(self.folder) / f"{os.getpid()}.log"

        def counted(self, index, layers, data_digest):
            original(self, index, layers, data_digest)
            with open(log, "a") as out:
                out.write(f"{self.path.name} {index}\n")

        counted.counted = True
        store.EmbeddingStore.write_chunk = counted


def writes(folder: Path, store_name: str) -> Counter:
    lines = [line.split() for f in folder.glob("*.log") for line in f.read_text().splitlines()]
    return Counter(int(i) for name, i in lines if name == store_name)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from scstrata_service.families.scfoundation.fabricate import fabricate_checkpoint

    return fabricate_checkpoint(
        tmp_path_factory.mktemp("scf-dask"), hidden=16, n_layers=2, n_heads=2
    )


@pytest.fixture(scope="module")
def cells(checkpoint):
    from scstrata_service.families.scfoundation.checkpoint import load_vocabulary

    return make_cells(load_vocabulary(checkpoint), n_cells=N_CELLS, n_genes=100, seed=5)


@pytest.fixture(scope="module")
def replicas(checkpoint):
    """Two servers of the same checkpoint; ``stop(i)`` shuts replica i down mid-test."""
    from scstrata_service.launcher import running_service

    stacks = [contextlib.ExitStack() for _ in range(2)]

    def start(stack):
        return stack.enter_context(running_service([f"scf=scfoundation:{checkpoint.parent}"]))

    try:
        with ThreadPoolExecutor(2) as pool:
            urls = list(pool.map(start, stacks))
        yield urls, lambda i: stacks[i].close()
    finally:
        for stack in stacks:
            stack.close()


@pytest.fixture(scope="module")
def dask_client(tmp_path_factory):
    log_folder = tmp_path_factory.mktemp("writes")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(CountWrites(str(log_folder)))
        client.write_log = log_folder
        yield client


@pytest.fixture(scope="module")
def reference(replicas, cells):
    """The single-process, in-memory result of the same cells."""
    counts, genes = cells
    with Client(replicas[0][0], cache=False, progress=False, chunk_size=CHUNK) as client:
        return client.embed(counts, genes, model="scf", layers="all", pooling=POOLING)


def sweep(dask_client, urls, cells, out, **kwargs):
    counts, genes = cells
    return embed_on_dask(
        dask_client,
        counts,
        genes,
        model="scf",
        out=out,
        urls=urls,
        pooling=POOLING,
        chunk_size=CHUNK,
        chunks_per_task=CHUNKS_PER_TASK,
        max_concurrency=4,
        progress=False,
        **kwargs,
    )


def assert_equal_to_reference(store, reference):
    assert store.complete and store.layers == sorted(reference)
    for k, expected in reference.items():
        np.testing.assert_array_equal(store.to_numpy(k), expected)  # exact, rows in order


def test_the_store_equals_the_single_process_result(
    dask_client, replicas, cells, reference, tmp_path
):
    urls, _ = replicas
    store = sweep(dask_client, urls, cells, tmp_path / "layers.zarr")
    assert_equal_to_reference(read_store(tmp_path / "layers.zarr"), reference)
    n_chunks = -(-N_CELLS // CHUNK)
    assert writes(dask_client.write_log, "layers.zarr") == Counter(range(n_chunks))
    assert store.n_cells == N_CELLS

    # both workers took part, and a rerun finds every chunk done and writes nothing
    assert len(dask_client.scheduler_info()["workers"]) == 2
    sweep(dask_client, urls, cells, tmp_path / "layers.zarr")
    assert writes(dask_client.write_log, "layers.zarr") == Counter(range(n_chunks))


def test_a_file_input_is_read_by_the_workers(dask_client, replicas, cells, reference, tmp_path):
    """From the counts layer of the file (X holds other values: reading X would not match)."""
    counts, genes = cells
    n = 4 * CHUNK
    adata = ad.AnnData(counts[:n].astype(np.float32) * 3)
    adata.layers["counts"] = counts[:n].astype(np.float32)
    adata.var_names = genes
    adata.write_h5ad(tmp_path / "cells.h5ad")
    urls, _ = replicas
    embed_on_dask(
        dask_client,
        tmp_path / "cells.h5ad",
        model="scf",
        out=tmp_path / "from-file.zarr",
        urls=urls[:1],
        counts_layer="counts",
        pooling=POOLING,
        chunk_size=CHUNK,
        chunks_per_task=2,
        progress=False,
    )
    rows = {k: layer[:n] for k, layer in reference.items()}
    assert_equal_to_reference(read_store(tmp_path / "from-file.zarr"), rows)


def test_in_process_workers_write_the_same_store_as_the_replicas(
    dask_client, replicas, checkpoint, cells, reference, tmp_path
):
    counts, genes = cells
    n = 3 * CHUNK  # the first 3 chunks (see the module's docstring)
    embed_on_dask(
        dask_client,
        counts[:n],
        genes,
        model="scf",
        out=tmp_path / "in-process.zarr",
        in_process=f"scfoundation:{checkpoint.parent}",
        pooling=POOLING,
        chunk_size=CHUNK,
        chunks_per_task=1,
        progress=False,
    )
    store = read_store(tmp_path / "in-process.zarr")
    assert_equal_to_reference(store, {k: rows[:n] for k, rows in reference.items()})
    # the same card digest as over HTTP: a sweep may be resumed either way
    with Client(replicas[0][0], cache=False) as client:
        (card,) = client.models()
    assert store.spec.card_digest == digest_card(card.model_dump(mode="json"))


def test_the_cli_runs_a_sweep_on_the_scheduler(dask_client, replicas, cells, tmp_path, capsys):
    from scstrata_client.cli import main

    counts, genes = cells
    adata = ad.AnnData(counts[:700].astype(np.float32))
    adata.var_names = genes
    adata.write_h5ad(tmp_path / "few.h5ad")
    urls, _ = replicas
    code = main(
        ["embed", str(tmp_path / "few.h5ad"), "-o", str(tmp_path / "few.zarr"),
         "--scheduler", dask_client.scheduler.address, "--url", ",".join(urls),
         "--model", "scf", "--layers", "0,-1", "--pooling", POOLING, "--chunk-size", "100"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    store = read_store(tmp_path / "few.zarr")
    assert store.complete and store.layers == [0, 2] and store.n_cells == 700
    assert "wrote" in capsys.readouterr().err


def test_a_store_of_other_options_is_refused(dask_client, replicas, cells, tmp_path):
    counts, genes = cells
    urls, _ = replicas
    few = (counts[:300], genes)
    sweep(dask_client, urls, few, tmp_path / "small.zarr")
    with pytest.raises(StoreMismatch, match="options"):
        sweep(dask_client, urls, few, tmp_path / "small.zarr", options={"pre_normalized": True})


def _until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the sweep did not get there in time")
        time.sleep(0.05)


def test_a_killed_worker_and_a_stopped_replica_cost_no_cell_twice(
    dask_client, replicas, cells, reference, tmp_path
):
    """Last in the module: it stops replica 2 for good."""
    urls, stop = replicas
    out = tmp_path / "faults.zarr"
    struck: dict[str, int] = {}  # fault -> chunks written when it struck

    def done() -> int:
        return len(writes(dask_client.write_log, "faults.zarr"))

    def inject() -> None:
        _until(lambda: done() >= 4)
        victim, pid = next(iter(dask_client.run(os.getpid).items()))
        os.kill(pid, signal.SIGKILL)  # mid-task: its nanny restarts it, Dask reruns its tasks
        struck[f"killed worker {victim}"] = done()
        _until(lambda: done() >= 12)
        struck[f"stopped replica {urls[1]}"] = done()
        stop(1)  # SIGTERM to its process group: it refuses connections from here on

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    sweep(dask_client, urls, cells, out)
    injector.join(timeout=60)

    n_chunks = -(-N_CELLS // CHUNK)
    assert len(struck) == 2 and max(struck.values()) < n_chunks, struck  # both struck mid-run
    assert writes(dask_client.write_log, "faults.zarr") == Counter(range(n_chunks))
    assert_equal_to_reference(read_store(out), reference)
