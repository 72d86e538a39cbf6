"""Layer sweeps on a Dask cluster: row chunks embedded on Dask workers, written to one store.

The driver (this process) plans the job, creates or reopens the store and submits one task per
run of ``chunks_per_task`` unfinished chunks. Each task, on a Dask worker, reads its rows (from
the input file on shared storage, or from the task itself for an in-memory matrix), embeds them
through the service replicas (or, ``in_process``, through a backend loaded once on that worker),
and writes each chunk into the store, which marks it done only once it is complete. The driver
shows one progress bar over all workers (``tqdm.auto``: a widget in a notebook) as tasks finish.

A task that finds a chunk already done skips it, so a task that Dask re-runs after losing its
worker, or a rerun of the whole sweep, embeds only what is missing.

Needs ``pip install 'scstrata-client[dask]'``; ``in_process`` also needs scstrata-service (and
torch) on the workers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

try:
    import distributed
except ImportError as err:  # the [dask] extra
    raise ImportError(
        "scstrata_client.distributed needs Dask: pip install 'scstrata-client[dask]'"
    ) from err

from ._base import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CONCURRENCY
from ._cache import digest_card, digest_chunk, digest_genes
from ._protocol import normalise_layers, resolve_layers
from ._source import RowSource, open_rows
from .models import ModelCard
from .store import InputSpec, StoreSpec, digest_structure, open_store

DEFAULT_CHUNKS_PER_TASK = 8


@dataclass(frozen=True)
class SweepSpec:
    """Everything a task needs besides its rows (small: it travels with every task)."""

    store_path: str
    store: StoreSpec
    genes: tuple[str, ...]
    genes_digest: str
    urls: tuple[str, ...] = ()
    in_process: str | None = None  # "FAMILY:PATH" of a checkpoint the workers can read
    token: str | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    input_path: str | None = None
    """The ``.h5ad`` / ``.zarr`` every worker reads its rows from; None: rows come with tasks."""
    counts_layer: str | None = None
    """The layer of ``input_path`` that holds the counts; None: its ``X``."""

    def __repr__(self) -> str:  # Dask shows task arguments in its dashboard: never the token
        return f"SweepSpec(store={self.store_path!r}, model={self.store.model!r}, urls={self.urls})"

    @property
    def embedder_key(self) -> tuple:
        """What a worker's embedder depends on (it is reused by every task with this key)."""
        return (self.urls, self.in_process, self.token, self.store.model, self.store.chunk_size)


# -- on the driver ----------------------------------------------------------------------------


def embed_on_dask(
    scheduler: str | distributed.Client,
    X: Any,
    genes: Sequence[str] | None = None,
    *,
    model: str,
    out: str | os.PathLike[str],
    urls: str | Sequence[str] | None = None,
    in_process: str | None = None,
    layers: Any = "all",
    pooling: str = "official",
    options: Mapping[str, Any] | None = None,
    token: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunks_per_task: int = DEFAULT_CHUNKS_PER_TASK,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    counts_layer: str | None = None,
    gene_column: str | None = None,
    progress: bool | None = None,
) -> Any:
    """Embed every cell of ``X`` on a Dask cluster into the store ``out``; return the store.

    Args:
        scheduler: a ``distributed.Client``, a scheduler address (``tcp://host:8786``), or
            ``"local"`` / ``"local:N"``: a cluster of this machine's processes (N workers),
            started for this sweep and closed after it, to try a sweep on one machine.
        X: a path to a ``.h5ad`` or ``.zarr`` AnnData that every worker can read at the same
            path (each task reads its own rows), or counts in memory (an AnnData, a SciPy
            sparse matrix, a NumPy array; each task then carries its rows).
        genes: one name per column of an in-memory matrix (as ``Client.embed``).
        model: the served model's name.
        out: the store (``.zarr``), shared by every worker. A rerun with the same inputs embeds
            only the chunks not yet done; one with another model or options is refused.
        urls: the service replicas (one URL or several; chunks go to the least busy).
        in_process: ``"FAMILY:PATH"`` to embed on the workers themselves, each loading that
            checkpoint once on its own device (needs scstrata-service on the workers), instead
            of calling replicas.
        layers, pooling, options: as for ``Client.embed``.
        token: the replicas' bearer token (default ``$SCSTRATA_TOKEN``); it travels to the
            workers with every task.
        chunk_size: cells per store chunk and per request.
        chunks_per_task: consecutive chunks per Dask task.
        max_concurrency: requests in flight per task (chunks embedded together in process).
        counts_layer: counts from ``layers[counts_layer]`` instead of ``X`` (of a file, each
            worker reads its rows of that layer).
        gene_column: gene names from ``var[gene_column]``.
        progress: one bar over all workers (cells done / total, cells/s); None: only when
            stderr is a terminal or in a notebook.
    """
    if (urls is None) == (in_process is None):
        raise ValueError("urls or in_process: give exactly one (replicas, or a backend per worker)")
    for name, value in (
        ("chunk_size", chunk_size),
        ("chunks_per_task", chunks_per_task),
        ("max_concurrency", max_concurrency),
    ):
        if value < 1:
            raise ValueError(f"{name}: must be at least 1, got {value}")
    url_list = (urls,) if isinstance(urls, str) else tuple(urls or ())
    token = token if token is not None else os.environ.get("SCSTRATA_TOKEN")
    rows, input_path = _open_input(X, genes, counts_layer, gene_column)
    gene_list, n_cells = rows.genes, rows.n_cells
    owns_client = not isinstance(scheduler, distributed.Client)
    cluster = _local_cluster(scheduler) if owns_client else None
    dask_client = distributed.Client(cluster or scheduler) if owns_client else scheduler
    try:
        if in_process is not None:
            card = ModelCard.model_validate(
                dask_client.submit(_in_process_card, model, in_process, pure=False).result()
            )
        else:
            card = _replica_card(url_list, model, token)
        wire = normalise_layers(layers)
        wanted = resolve_layers(wire, card.n_layers)
        if wanted is None:
            raise ValueError(f"layers: {layers!r} is out of range 0..{card.n_layers} for {model}")
        if pooling not in card.poolings:
            raise ValueError(
                f"pooling: {model} has no pooling {pooling!r} (has: {', '.join(card.poolings)})"
            )
        options_dict = _options_dict(options)
        store_spec = StoreSpec(
            model=model,
            pooling=pooling,
            layers=wanted,
            dim=card.poolings[pooling],
            chunk_size=chunk_size,
            card_digest=digest_card(card.model_dump(mode="json")),
            checkpoint_digest=card.checkpoint_digest,
            options=options_dict,
            input=InputSpec(
                n_cells=n_cells,
                n_genes=len(gene_list),
                data_digest=digest_structure(gene_list, n_cells, rows.indptr),
            ),
        )
        store = open_store(out, store_spec)  # refuses a store written for another job
        spec = SweepSpec(
            store_path=str(out),
            store=store_spec,
            genes=tuple(gene_list),
            genes_digest=digest_genes(gene_list),
            urls=url_list,
            in_process=in_process,
            token=token,
            max_concurrency=max_concurrency,
            input_path=input_path,
            counts_layer=counts_layer if input_path else None,
        )
        return _run(
            dask_client, spec, store, None if input_path else rows, chunks_per_task, progress
        )
    finally:
        if owns_client:
            dask_client.close()
        if cluster is not None:
            cluster.close()


def _local_cluster(scheduler: str) -> distributed.LocalCluster | None:
    """A ``LocalCluster`` for ``"local"`` or ``"local:N"`` (N worker processes, one thread
    each: a task keeps its own requests in flight); None for a scheduler's address."""
    name, _, count = scheduler.partition(":")
    if name != "local":
        return None
    if count and not (count.isdigit() and int(count) >= 1):
        raise ValueError(f"scheduler: 'local:N' takes a number of workers N >= 1, got {count!r}")
    return distributed.LocalCluster(
        n_workers=int(count) if count else None, threads_per_worker=1, dashboard_address=None
    )


def _open_input(
    X: Any, genes: Sequence[str] | None, counts_layer: str | None, gene_column: str | None
) -> tuple[RowSource, str | None]:
    """The input's rows (of a file, the driver reads only their shape and gene names), and
    the file's absolute path when the workers are to read it themselves."""
    if not isinstance(X, str | os.PathLike):
        return open_rows(X, genes, counts_layer=counts_layer, gene_column=gene_column), None
    path = Path(X).resolve()
    rows = open_rows(path, genes, counts_layer=counts_layer, gene_column=gene_column)
    return rows, str(path)


def _replica_card(urls: Sequence[str], model: str, token: str | None) -> ModelCard:
    """The model's card, the same on every replica (a store never mixes checkpoints)."""
    from ._client import Client

    if not urls:
        raise ValueError("urls: give at least one service URL")
    cards: dict[str, ModelCard] = {}
    for url in urls:
        with Client(url, token=token, cache=False) as client:
            found = [c for c in client.models() if c.name == model]
        if not found:
            raise ValueError(f"model: {url} does not serve {model!r}")
        cards[url] = found[0]
    first = next(iter(cards.values()))
    differ = [url for url, card in cards.items() if card != first]
    if differ:
        raise ValueError(
            f"urls: {', '.join(differ)} serve{'s' if len(differ) == 1 else ''} another {model!r} "
            f"(checkpoint or settings) than {urls[0]}; point every URL at the same model"
        )
    return first


def _run(
    dask_client: distributed.Client,
    spec: SweepSpec,
    store: Any,
    rows: RowSource | None,
    chunks_per_task: int,
    progress: bool | None,
) -> Any:
    from tqdm.auto import tqdm

    job = spec.store
    n_cells = job.input.n_cells
    done = store.done_chunks()
    done_cells = sum(job.rows(i)[1] - job.rows(i)[0] for i in done)
    # Done chunks are handed out too: their task checks each against its cells' digest (as a
    # streamed run does) before trusting it, so a store from other cells is never mixed into.
    chunk_ids = list(range(job.n_chunks))
    tasks = [chunk_ids[i : i + chunks_per_task] for i in range(0, len(chunk_ids), chunks_per_task)]
    futures = []
    for ids in tasks:
        own_rows = None if rows is None else rows.rows(job.rows(ids[0])[0], job.rows(ids[-1])[1])
        futures.append(dask_client.submit(_embed_task, spec, ids, own_rows, pure=False))
    bar = tqdm(
        total=n_cells,
        initial=done_cells,
        unit="cell",
        unit_scale=True,
        desc=f"{spec.store.model} on Dask ({len(tasks)} task{'s' if len(tasks) != 1 else ''})",
        disable=_hide_progress(progress),
    )
    try:
        for future in distributed.as_completed(futures):
            bar.update(future.result())
    except BaseException:
        dask_client.cancel(futures)
        raise
    finally:
        bar.close()
    return store


def _hide_progress(progress: bool | None) -> bool | None:
    if progress is not None:
        return not progress
    return None  # tqdm's own rule: shown on a terminal or as a notebook widget


def _options_dict(options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options: expected a dict, got {type(options).__name__}")
    return dict(options or {})


# -- on a worker ------------------------------------------------------------------------------


def _embed_task(spec: SweepSpec, chunk_ids: list[int], rows: sp.csr_matrix | None) -> int:
    """Embed and store the chunks of one task not done yet; return the cells it wrote.

    A chunk already done (by an earlier run, or by this task before Dask lost its worker and
    ran it again) is checked against its cells and skipped: every chunk is written once.
    """
    job = spec.store
    store = open_store(spec.store_path, job)
    first, last = job.rows(chunk_ids[0])[0], job.rows(chunk_ids[-1])[1]
    if rows is None:
        rows = _worker_rows(spec.input_path, spec.genes, spec.counts_layer).rows(first, last)
    todo = []
    for i in chunk_ids:
        start, stop = job.rows(i)
        cells = rows[start - first : stop - first]
        digest = digest_chunk(cells, spec.genes_digest)
        if store.chunk_digest(i) is None:
            todo.append((i, cells, digest))
        else:
            store.verify_chunk(i, digest)
    if not todo:
        return 0
    digests = {i: digest for i, _, digest in todo}
    embed = _embedder(spec)
    written = 0
    with ThreadPoolExecutor(spec.max_concurrency, thread_name_prefix="scstrata-dask") as pool:
        for i, cells, layers in embed(pool, [(i, cells) for i, cells, _ in todo]):
            store.write_chunk(i, layers, digests[i])
            written += cells.shape[0]
    return written


def _worker_rows(path: str | None, genes: tuple[str, ...], counts_layer: str | None) -> RowSource:
    """The input file, opened once per worker process (backed: rows are read when asked)."""
    if path is None:
        raise ValueError("a task without rows needs an input file")
    with _LOAD_LOCK:
        key = (path, genes, counts_layer)
        if key not in _INPUTS:
            _INPUTS[key] = open_rows(path, list(genes), counts_layer=counts_layer)
        return _INPUTS[key]


_INPUTS: dict[tuple, RowSource] = {}


def _embedder(spec: SweepSpec) -> Any:
    """How this worker embeds chunks: one client (or backend) per worker process, reused."""
    with _LOAD_LOCK:
        key = spec.embedder_key
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = _InProcess(spec) if spec.in_process is not None else _OverHttp(spec)
        return _EMBEDDERS[key]


_EMBEDDERS: dict[tuple, Any] = {}


class _OverHttp:
    def __init__(self, spec: SweepSpec):
        from ._client import Client

        self.spec = spec
        self.client = Client(
            list(spec.urls) if len(spec.urls) > 1 else spec.urls[0],
            token=spec.token,
            chunk_size=spec.store.chunk_size,
            max_concurrency=1,
            cache=False,  # the store is this job's cache
            progress=False,
        )

    def __call__(self, pool: ThreadPoolExecutor, chunks: list[tuple[int, sp.csr_matrix]]):
        """``(chunk index, cells, {layer: rows})`` as each chunk's reply comes in."""
        from concurrent.futures import as_completed

        job = self.spec.store

        def one(i: int, cells: sp.csr_matrix) -> tuple[int, sp.csr_matrix, dict[int, np.ndarray]]:
            layers = self.client.embed(
                cells,
                list(self.spec.genes),
                model=job.model,
                layers=list(job.layers),
                pooling=job.pooling,
                options=job.options,
            )
            return i, cells, layers

        futures = [pool.submit(one, i, cells) for i, cells in chunks]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


class _InProcess:
    """A backend on this worker's own device, loaded once; chunks share forward passes."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self.backend = _load_backend(spec.store.model, spec.in_process)

    def __call__(self, pool: ThreadPoolExecutor, chunks: list[tuple[int, sp.csr_matrix]]):
        from scstrata_service.contract import InputError
        from scstrata_service.engine import EmbedJob, run_jobs

        genes, options = list(self.spec.genes), self.spec.store.options
        outputs = [(self.spec.store.pooling, list(self.spec.store.layers))]
        step = self.spec.max_concurrency
        for at in range(0, len(chunks), step):
            group = chunks[at : at + step]
            try:
                for _, cells in group:
                    self.backend.check_input(cells, genes, options)
            except InputError as err:
                raise ValueError(str(err)) from None
            jobs = [EmbedJob(self.backend, cells, genes, outputs, options) for _, cells in group]
            for (i, cells), result in zip(group, run_jobs(jobs)):
                yield i, cells, result.outputs[0]


_LOAD_LOCK = threading.RLock()  # _embedder holds it while _load_backend takes it


def _load_backend(model: str, in_process: str | None) -> Any:
    """The backend of ``FAMILY:PATH``, loaded once per worker process under the name
    ``model``, on this worker's device (``SCSTRATA_DEVICE``, else its CUDA device, else CPU)."""
    try:
        from scstrata_service.registry import ModelSpec, Registry
        from scstrata_service.runtime.device import apply_threads
        from scstrata_service.settings import SETTINGS
    except ImportError:
        raise RuntimeError(
            "in_process: this Dask worker has no scstrata-service; install it (and torch) "
            "on the workers, or embed through replicas (urls)"
        ) from None
    with _LOAD_LOCK:
        key = (model, in_process)
        if key not in _BACKENDS:
            # The service's thread setting (SCSTRATA_THREADS, else the CPUs this process may
            # use), not the one thread Dask's nanny gives each worker: on a CPU the thread
            # count changes the order of sums, and a store must not depend on who wrote it.
            apply_threads()
            spec = ModelSpec.parse(f"{model}={in_process}")
            registry = Registry.load([spec], **SETTINGS.backend_settings())
            _BACKENDS[key] = registry.get(model)
        return _BACKENDS[key]


_BACKENDS: dict[tuple[str, str | None], Any] = {}


def _in_process_card(model: str, in_process: str) -> dict:
    """Runs on a worker: the card of the backend it loads (the driver needs no torch)."""
    return _load_backend(model, in_process).card.model_dump(mode="json")
