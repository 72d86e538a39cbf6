"""The synchronous client: chunks sent concurrently from a thread pool, with retries."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, Literal

import httpx
import numpy as np

from ._base import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CONCURRENCY, Cancelled, ClientBase
from ._cache import DEFAULT_MAX_BYTES
from ._core import ChunkTask, EmbedJob, TransportChoice
from ._protocol import ChunkResult, decode_reply
from ._retry import RETRYABLE_ERRORS, RetryState, transport_error
from .exceptions import InvalidRequest
from .models import ModelCard

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("scstrata_client")

Layers = int | Sequence[int] | Literal["all"]


class Client(ClientBase):
    """A client of one scstrata service.

    Args:
        url: the service's base URL, e.g. ``"http://localhost:3000"``.
        token: sent as ``Authorization: Bearer <token>``; defaults to ``$SCSTRATA_TOKEN``.
        timeout: seconds allowed for each phase of one HTTP call (connect, send, read).
            Generous by default, because a chunk of cells can take minutes on a busy GPU.
        chunk_size: cells per request. Lower it if the service answers 413.
        max_concurrency: chunks in flight at once (threads here, tasks in ``AsyncClient``).
        max_retries: retries after the first try, for connection failures, timeouts, 429
            and 503. Other errors are never retried.
        backoff: the first retry's base delay in seconds; it doubles at each retry, with
            random jitter, and a ``Retry-After`` header lengthens it.
        progress: show a progress bar over cells. ``None`` shows one only when stderr is a
            terminal and more than one request is needed.
        cache: keep each chunk's result on disk, so that a repeated or interrupted run sends
            only what is missing. ``False`` disables it.
        cache_dir: the cache's folder (default ``$SCSTRATA_CACHE_DIR``, else
            ``~/.cache/scstrata``).
        cache_max_bytes: the cache's size limit; least recently used results go first.
        transport_format: ``"json"``, ``"npz"`` (binary replies, and the cells sent as
            binary ``cells_npz``), or ``"auto"``: npz for a chunk whose result exceeds
            200,000 floats or whose cells hold more than 100,000 non-zeros, JSON otherwise,
            and JSON throughout if the service turns out to predate npz (JSON cells only, if
            it predates just ``cells_npz``).
        transport: an ``httpx`` transport to send requests through, instead of the network
            (for proxies, Unix sockets, or tests).

    Use it as a context manager, or call :meth:`close`, to release its connections.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 300.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_retries: int = 5,
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
        self._http = httpx.Client(transport=transport, **self._http_settings())
        self._encoding = threading.Lock()  # see _post

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

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
    ) -> dict[int, np.ndarray]:
        """Embed cells with ``model``; return ``{layer index: float32 array (cells x dim)}``.

        Args:
            X: counts, cells x genes: an AnnData (``.X``, genes from ``.var_names``), a SciPy
                sparse matrix, or a 2-D NumPy array.
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

        Cells are sent ``chunk_size`` at a time, ``max_concurrency`` chunks at once, and
        reassembled in input order; results already in the cache are not asked for again.
        A reply with a missing or extra cell or layer raises ``ProtocolError``.
        """
        job = self._prepare(X, genes, model, layers, pooling, options, write_to)
        result = dict(self._run(job))
        self._report(job)
        self._write(write_to, job, result)
        return result

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
        chunk asking for all of them together, and are yielded once the last chunk is in.
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
        )

    def _run(self, job: EmbedJob) -> Iterator[tuple[int, np.ndarray]]:
        cached_cells = job.load_cache()
        tasks = job.tasks(self.transport_format, self._npz_ok)
        bar = self._bar(job, len(tasks), cached_cells)
        cancel = threading.Event()
        pool: ThreadPoolExecutor | None = None
        try:
            yield from job.take_complete()
            replies: Iterator[tuple[ChunkTask, ChunkResult]]
            if self.max_concurrency == 1 or len(tasks) <= 1:
                replies = (self._send_chunk(job, task, cancel) for task in tasks)
            else:
                pool = ThreadPoolExecutor(
                    min(self.max_concurrency, len(tasks)), thread_name_prefix="scstrata-chunk"
                )
                futures = [pool.submit(self._send_chunk, job, t, cancel) for t in tasks]
                replies = (future.result() for future in as_completed(futures))
            for task, chunk in replies:
                job.accept(task, chunk)
                bar.update(task.n_cells)
                yield from job.take_complete()
            job.result()  # raises if a chunk were somehow left out
        finally:
            cancel.set()  # chunks still waiting to retry give up
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            bar.close()

    def _send_chunk(
        self, job: EmbedJob, task: ChunkTask, cancel: threading.Event
    ) -> tuple[ChunkTask, ChunkResult]:
        task = self._current(task)
        while True:
            try:
                payload = self._post(job, task, cancel)
                break
            except InvalidRequest as exc:
                # An older service: at most two steps back (JSON cells, then JSON replies).
                fallback = self._json_fallback(task, exc)
                if fallback is None or fallback == task:
                    raise
                task = fallback
        return task, job.parse(task, payload)

    def _post(self, job: EmbedJob, task: ChunkTask, cancel: threading.Event) -> Any:
        # One chunk encoded at a time: threads would share the GIL and finish encoding
        # together, so the first chunk would leave (and the service start) several times later.
        with self._encoding:
            content = job.content(task)
        return self._request(
            "POST", "/embed", cancel=cancel, content=content, headers=job.headers(task)
        )

    def _request(
        self, method: str, path: str, *, cancel: threading.Event | None = None, **kwargs: Any
    ) -> Any:
        """Send one request, retrying transient failures; return the decoded reply."""
        url = f"{self.url}{path}"
        retry = RetryState(self._policy)
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"{method} {url}")
            try:
                return decode_reply(self._http.request(method, path, **kwargs))
            except RETRYABLE_ERRORS as exc:
                delay = retry.failed(exc, method, url)
            except httpx.HTTPError as exc:
                raise transport_error(exc, method, url) from exc
            logger.debug("%s %s: retrying in %.2f s", method, url, delay)
            self._pause(delay, cancel)

    def _pause(self, delay: float, cancel: threading.Event | None) -> None:
        if self._sleep is not None:
            self._sleep(delay)
        elif cancel is None:
            time.sleep(delay)
        elif cancel.wait(delay):
            raise Cancelled("the run was given up")
