"""The synchronous client: chunks sent concurrently from a thread pool, with retries."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Literal

import httpx
import numpy as np

from ._base import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CONCURRENCY, Cancelled, ClientBase
from ._cache import DEFAULT_MAX_BYTES
from ._core import ChunkTask, EmbedJob, TransportChoice
from ._protocol import ChunkResult, decode_reply
from ._replicas import HEALTH_PATHS, PROBE_TIMEOUT_S, Replica
from ._retry import DEFAULT_MAX_RETRIES, RETRYABLE_ERRORS, RetryState, transport_error
from ._source import open_rows
from .exceptions import InvalidRequest
from .models import ModelCard
from .store import EmbeddingStore

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("scstrata_client")

Layers = int | Sequence[int] | Literal["all"]


def detached(response: httpx.Response, body: bytes) -> httpx.Response:
    """A reply holding ``body``, freed as soon as it is decoded.

    httpx's own response is part of a reference cycle (its stream points back at it), which
    only the garbage collector frees, later: a body it held (``read()``) outlived its use, and
    a run's peak memory held about a dozen replies too many. So the body is read by iterating,
    never stored on that response, and handed on in a plain one.
    """
    return httpx.Response(
        response.status_code, headers=response.headers, content=body, request=response.request
    )


class Client(ClientBase):
    """A client of an scstrata service (one URL, or several replicas of it).

    Args:
        url: the service's base URL, e.g. ``"http://localhost:3000"``; or several replicas
            (a list, or one comma-separated string): each chunk goes to the replica with the
            fewest requests outstanding, a failing one is taken out until it answers its
            health check (``/readyz``), and ``last_run`` reports cells/s per replica.
        token: sent as ``Authorization: Bearer <token>``; defaults to ``$SCSTRATA_TOKEN``.
        timeout: seconds allowed for each phase of one HTTP call (connect, send, read).
            Generous by default, because a chunk of cells can take minutes on a busy GPU.
        chunk_size: cells per request. Lower it if the service answers 413.
        max_concurrency: chunks in flight at once per replica (threads here, tasks in
            ``AsyncClient``).
        max_retries: retries after the first try, for connection failures, timeouts, 429
            and 503. Other errors are never retried. The default (8) waits at least 91.5 s
            in all, longer than a service restart.
        backoff: the first retry's base delay in seconds; it doubles at each retry, with
            random jitter, and a ``Retry-After`` header lengthens it.
        progress: show a progress bar over cells (``tqdm.auto``: a bar on a terminal, a
            widget in a notebook), moved by each reply's cells as it arrives. ``None`` shows
            one when more than one request is needed, unless stderr goes to a file or a log;
            ``False`` prints nothing.
        cache: keep each chunk's result on disk, so that a repeated or interrupted run sends
            only what is missing. ``False`` disables it.
        cache_dir: the cache's folder (default ``$SCSTRATA_CACHE_DIR``, else
            ``~/.cache/scstrata``).
        cache_max_bytes: the cache's size limit; least recently used results go first.
        transport_format: ``"json"``, ``"npz"`` (binary replies, and the cells sent as
            binary ``cells_npz``), or ``"auto"``: npz for a chunk whose result exceeds
            200,000 floats or whose cells hold more than 100,000 non-zeros, JSON otherwise,
            and JSON throughout if the service's ``GET /info`` (read once, before the first
            binary request; a 404 means an older service, JSON only) does not list npz
            (JSON cells only, if it does not list ``cells_npz``).
        transport: an ``httpx`` transport to send requests through, instead of the network
            (for proxies, Unix sockets, or tests).

    Use it as a context manager, or call :meth:`close`, to release its connections.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        timeout: float = 300.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: float = 0.5,
        progress: bool | None = None,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_max_bytes: int = DEFAULT_MAX_BYTES,
        transport_format: TransportChoice = "auto",
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(
            url,
            token=token,
            timeout=timeout,
            chunk_size=chunk_size,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            backoff=backoff,
            progress=progress,
            cache=cache,
            cache_dir=cache_dir,
            cache_max_bytes=cache_max_bytes,
            transport_format=transport_format,
        )
        self._replicas = self._replica_set(lambda **kw: httpx.Client(transport=transport, **kw))
        self._http = self._replicas.primary.http
        self._encoding = threading.Lock()  # see _post

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for replica in self._replicas.replicas:
            replica.http.close()

    def models(self) -> list[ModelCard]:
        """The model cards of every model the service serves (``GET /models``)."""
        return self._parse_cards(self._request("GET", "/models"))

    def embed(
        self,
        X: Any,
        genes: Sequence[str] | None = None,
        *,
        model: str,
        layers: Layers = "all",
        pooling: str = "official",
        options: Mapping[str, Any] | None = None,
        write_to: AnnData | None = None,
        out: str | os.PathLike[str] | None = None,
        counts_layer: str | None = None,
        gene_column: str | None = None,
        key_added: str | None = None,
        extra_outputs: Sequence[str | Mapping[str, Any]] | None = None,
        min_known_genes: int | None = None,
        min_mapped_fraction: float | None = None,
    ) -> dict[int, np.ndarray] | EmbeddingStore | dict[str, Any]:
        """Embed cells with ``model``; return ``{layer index: float32 array (cells x dim)}``,
        or with ``out``, the ``EmbeddingStore`` the layers were streamed into.

        Args:
            X: counts, cells x genes: an AnnData (``.X``, genes from ``.var_names``; in memory
                or opened with ``backed="r"``), a path to an ``.h5ad`` file or an AnnData
                ``.zarr`` store (both read a chunk of rows at a time), a SciPy sparse matrix,
                or a 2-D NumPy array.
            genes: one gene name per column of ``X``; required unless ``X`` is an AnnData,
                where it overrides ``var_names``.
            model: a model name from :meth:`models`.
            layers: an index in ``0..L`` (negatives count from the end, ``-1`` = L), a list
                of them, or ``"all"``. Keys of the result are the resolved indices.
            pooling: one of the model card's poolings.
            options: model-family options, e.g. ``{"pre_normalized": False}``.
            write_to: an AnnData with the same cells, in the same order, to store each layer
                in ``obsm["X_<model>_layer<k>"]`` (``_<pooling>`` appended unless pooling is
                "official") with provenance in ``uns["scstrata"]``.
            out: a zarr store path (e.g. ``"layers.zarr"``) to write each chunk into as it
                arrives, instead of returning arrays: the client's memory stays flat however
                many cells there are. Rerun with the same arguments to resume: only chunks the
                store does not hold are sent. A store written for another model card, options,
                layers, pooling, chunk size or input raises ``StoreMismatch``.
            counts_layer: with an AnnData or a path to one, counts from
                ``layers[counts_layer]``, not X (from a path, read a chunk at a time too).
            gene_column: with an AnnData or a path to one, gene names from
                ``var[gene_column]``.
            key_added: the obsm key stem for ``write_to`` (``<key_added>_layer<k>``), as
                scanpy's ``key_added``; default ``X_<model>``.
            extra_outputs: more poolings of the same cells from the same forward pass: pooling
                names (at ``layers``), or ``{"pooling": "mean", "layers": [0, -1]}``. The
                result is then ``{pooling: {layer: array}}``, the call's pooling included (with
                ``out``, ``{pooling: EmbeddingStore}``, one ``<model>/<pooling>`` group each;
                with ``write_to``, one obsm key per pooling and layer).
            min_known_genes: the fewest of the model's genes the cells must carry, else the
                service refuses them (400): default the server's (5,000, or half a smaller
                panel), which a gene subset such as 2,000 HVGs is under. Lower it for a
                targeted panel.
            min_mapped_fraction: the least share of the counts on genes the model knows,
                else a 400 (default the server's, 0.5).

        Cells are sent ``chunk_size`` at a time, ``max_concurrency`` chunks at once, and
        reassembled in input order; results already in the cache are not asked for again.
        A reply with a missing or extra cell or layer raises ``ProtocolError``.
        """
        self._check_out(out, write_to)
        X = open_rows(X, genes, counts_layer=counts_layer, gene_column=gene_column)
        genes = None  # (the row source holds them)
        fields = self._coverage_fields(min_known_genes, min_mapped_fraction)
        job = self._prepare(
            X, genes, model, layers, pooling, options, write_to, extra_outputs, fields
        )
        if out is not None:
            job.open_store(out)
            for _ in self._run(job):
                pass  # every chunk goes to the store as it arrives
            self._report(job)
            return self._stores(job)
        result = dict(self._run(job))
        self._report(job)
        return self._results(job, result, write_to, key_added)

    def layer(
        self,
        X: Any,
        model: str,
        layer: int,
        *,
        genes: Sequence[str] | None = None,
        pooling: str = "official",
        options: Mapping[str, Any] | None = None,
        write_to: AnnData | None = None,
    ) -> np.ndarray:
        """One layer (cells x dim), fetching only the chunks the cache does not hold."""
        k = self._check_layer(layer)
        result = self.embed(
            X, genes, model=model, layers=k, pooling=pooling, options=options, write_to=write_to
        )
        (array,) = result.values()
        return array

    def sweep(
        self,
        X: Any,
        model: str,
        layers: Layers = "all",
        *,
        genes: Sequence[str] | None = None,
        pooling: str = "official",
        options: Mapping[str, Any] | None = None,
        write_to: AnnData | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(layer, array)`` for every requested layer as soon as it is complete.

        Layers the cache holds come first, at once; the rest come from one request per
        chunk asking for all of them together (one forward pass computes them all), so they
        complete with the last chunk. Each array is handed over, not kept: the client holds
        one copy of the result at most. For more cells than fit, use ``embed(out=...)``.
        With ``write_to``, each layer is stored in the AnnData as it is yielded. Arguments
        are checked (and the model cards fetched) before this returns.
        """
        job = self._prepare(X, genes, model, layers, pooling, options, write_to)
        return self._sweep(job, write_to)

    def _sweep(self, job: EmbedJob, write_to: AnnData | None) -> Iterator[tuple[int, np.ndarray]]:
        for k, array in self._run(job):
            self._write(write_to, job, {k: array})
            yield k, array
        self._report(job)

    # -- plumbing ------------------------------------------------------------------------------

    def _prepare(
        self,
        X: Any,
        genes: Sequence[str] | None,
        model: str,
        layers: Any,
        pooling: str,
        options: Mapping[str, Any] | None,
        write_to: AnnData | None,
        extra_outputs: Sequence[Any] | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> EmbedJob:
        if self._cards is None:
            self.models()  # once per client: layer count, dimensions, checkpoint digest
        return self._plan(
            X,
            genes,
            model=model,
            layers=layers,
            pooling=pooling,
            options=options,
            write_to=write_to,
            extra_outputs=extra_outputs,
            fields=fields,
        )

    def _read_features(self) -> None:
        """``GET /info``, once per client: what the service accepts beyond JSON."""
        try:
            info = self._request("GET", "/info")
        except InvalidRequest as exc:
            if exc.status_code != 404:
                raise
            info = None  # a service older than /info
        self._learn_features(info)

    def _run(self, job: EmbedJob) -> Iterator[tuple[int, np.ndarray]]:
        job.load_cache()
        tasks = job.tasks(self.transport_format, self._npz_ok)
        if self._wants_features(job, tasks):
            self._read_features()
            tasks = job.tasks(self.transport_format, self._npz_ok)
        self._check_features(job)
        bar = self._bar(job, tasks)
        cancel = threading.Event()
        mark = self._replicas.start_run()
        try:
            self._check_replicas()
            yield from job.take_complete()
            for task, chunk in self._replies(job, tasks, cancel):
                if chunk is not None:  # (None: written to the store by its own thread)
                    job.accept(task, chunk)
                del chunk  # placed or written: the reply is not kept
                bar.update(task.n_cells)
                yield from job.take_complete()
            job.result()  # raises if a chunk were somehow left out
        finally:
            cancel.set()  # chunks still waiting to retry give up
            bar.close()
            self._run_report(job, mark)

    def _replies(
        self, job: EmbedJob, tasks: list[ChunkTask], cancel: threading.Event
    ) -> Iterator[tuple[ChunkTask, ChunkResult | None]]:
        """Replies as they come, with at most ``max_concurrency`` per replica in flight.

        Tasks are submitted only as earlier ones finish, and a finished future is dropped
        once its reply is handed on, so replies are never held beyond their use.
        """
        window = self.max_concurrency * len(self._replicas)
        if window == 1 or len(tasks) <= 1:
            for task in tasks:
                yield self._send_chunk(job, task, cancel)
            return
        todo = iter(tasks)
        pending: set[Future[tuple[ChunkTask, ChunkResult | None]]] = set()
        pool = ThreadPoolExecutor(min(window, len(tasks)), thread_name_prefix="scstrata-chunk")
        try:
            while True:
                for task in todo:
                    pending.add(pool.submit(self._send_chunk, job, task, cancel))
                    if len(pending) >= window:
                        break
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                failure = next((f.exception() for f in done if f.exception()), None)
                for future in done:
                    if future.exception() is None:
                        # Successful chunks are kept (and cached) even when another failed.
                        yield future.result()
                del done, future
                if failure is not None:
                    raise failure
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _send_chunk(
        self, job: EmbedJob, task: ChunkTask, cancel: threading.Event
    ) -> tuple[ChunkTask, ChunkResult | None]:
        """Send one chunk; return its parsed reply, or None once written to the job's store
        (from this thread, so that the writes of chunks in flight overlap)."""
        task = self._current(task)
        payload = self._post(job, task, cancel)
        chunk = job.parse(task, payload)
        if job.store is not None:
            job.accept(task, chunk)
            return task, None
        return task, chunk

    def _post(self, job: EmbedJob, task: ChunkTask, cancel: threading.Event) -> Any:
        # One chunk encoded at a time: threads would share the GIL and finish encoding
        # together, so the first chunk would leave (and the service start) several times later.
        with self._encoding:
            content = job.content(task)
        return self._request(
            "POST",
            "/embed",
            cancel=cancel,
            cells=task.n_cells,
            content=content,
            headers=job.headers(task),
        )

    def _request(
        self,
        method: str,
        path: str,
        *,
        cancel: threading.Event | None = None,
        cells: int = 0,
        **kwargs: Any,
    ) -> Any:
        """Send one request, retrying transient failures; return the decoded reply.

        With several replicas, a retryable failure takes that replica out and the request
        goes to another one at once; the retries are counted all the same.
        """
        retry = RetryState(self._policy)
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"{method} {self.url}{path}")
            self._probe_due()
            replica = self._replicas.acquire()
            url = f"{replica.url}{path}"
            started, answered = time.perf_counter(), 0
            try:
                with replica.http.stream(method, path, **kwargs) as response:
                    body = b"".join(response.iter_bytes())
                reply = decode_reply(detached(response, body))
                del body
                answered = cells
                return reply
            except RETRYABLE_ERRORS as exc:
                elsewhere = self._replicas.failed(replica)
                delay = retry.failed(exc, method, url)
            except httpx.HTTPError as exc:
                raise transport_error(exc, method, url) from exc
            finally:
                self._replicas.release(
                    replica, cells=answered, seconds=time.perf_counter() - started
                )
            if elsewhere:
                logger.warning("%s %s failed; trying another replica", method, url)
                continue
            logger.debug("%s %s: retrying in %.2f s", method, url, delay)
            self._pause(delay, cancel)

    def _check_replicas(self) -> None:
        """With several replicas: each must serve the same model cards (checked once each)."""
        if len(self._replicas) == 1:
            return
        for replica in self._replicas.replicas:
            if replica.verified:
                continue
            try:
                payload = decode_reply(replica.http.get("/models", timeout=PROBE_TIMEOUT_S))
            except (httpx.HTTPError, *RETRYABLE_ERRORS):
                self._replicas.failed(replica)  # out until its health check passes
                continue
            if not self._same_cards(replica, payload):
                self._replicas.failed(replica)
                replica.probe_at = float("inf")  # never back in

    def _probe_due(self) -> None:
        replica = self._replicas.due_probe()
        if replica is not None:
            self._replicas.probed(replica, self._healthy(replica))

    def _healthy(self, replica: Replica) -> bool:
        """The health check of a replica that was taken out: ``/readyz`` (else ``/livez``)
        answers 200, and its model cards are those of the others."""
        try:
            for path in HEALTH_PATHS:
                response = replica.http.get(path, timeout=PROBE_TIMEOUT_S)
                if response.status_code != 404:
                    break
            if response.status_code != 200:
                return False
            if not replica.verified:
                payload = decode_reply(replica.http.get("/models", timeout=PROBE_TIMEOUT_S))
                return self._same_cards(replica, payload)
        except (httpx.HTTPError, *RETRYABLE_ERRORS):
            return False
        return True

    def _pause(self, delay: float, cancel: threading.Event | None) -> None:
        if self._sleep is not None:
            self._sleep(delay)
        elif cancel is None:
            time.sleep(delay)
        elif cancel.wait(delay):
            raise Cancelled("the run was given up")
