"""The asyncio client: the same API as ``Client``, with chunks as tasks under a semaphore."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx
import numpy as np

from ._base import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CONCURRENCY, ClientBase
from ._cache import DEFAULT_MAX_BYTES
from ._client import detached
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


class AsyncClient(ClientBase):
    """The asyncio twin of :class:`Client`: same arguments, same methods, awaited.

    ``await client.embed(...)``, ``await client.layer(...)``, ``await client.models()`` and
    ``async for layer, array in client.sweep(...)``. Up to ``max_concurrency`` chunks are in
    flight at once. Use it as ``async with AsyncClient(url) as client:`` or call
    :meth:`aclose`. Cache reads and writes run in a worker thread, off the event loop.
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
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._replicas = self._replica_set(
            lambda **kw: httpx.AsyncClient(transport=transport, **kw)
        )
        self._http = self._replicas.primary.http

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for replica in self._replicas.replicas:
            await replica.http.aclose()

    async def models(self) -> list[ModelCard]:
        """The model cards of every model the service serves (``GET /models``)."""
        return self._parse_cards(await self._request("GET", "/models"))

    async def embed(
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
        """See :meth:`Client.embed`."""
        self._check_out(out, write_to)
        X = open_rows(X, genes, counts_layer=counts_layer, gene_column=gene_column)
        genes = None  # (the row source holds them)
        fields = self._coverage_fields(min_known_genes, min_mapped_fraction)
        job = await self._prepare(
            X, genes, model, layers, pooling, options, write_to, extra_outputs, fields
        )
        if out is not None:
            await asyncio.to_thread(job.open_store, out)
            async for _ in self._run(job):
                pass  # every chunk goes to the store as it arrives
            self._report(job)
            return self._stores(job)
        result = {k: array async for k, array in self._run(job)}
        self._report(job)
        return self._results(job, result, write_to, key_added)

    async def layer(
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
        """See :meth:`Client.layer`."""
        k = self._check_layer(layer)
        result = await self.embed(
            X, genes, model=model, layers=k, pooling=pooling, options=options, write_to=write_to
        )
        (array,) = result.values()
        return array

    async def sweep(
        self,
        X: Any,
        model: str,
        layers: Layers = "all",
        *,
        genes: Sequence[str] | None = None,
        pooling: str = "official",
        options: Mapping[str, Any] | None = None,
        write_to: AnnData | None = None,
    ) -> AsyncIterator[tuple[int, np.ndarray]]:
        """See :meth:`Client.sweep`; arguments are checked at the first iteration."""
        job = await self._prepare(X, genes, model, layers, pooling, options, write_to)
        async for k, array in self._run(job):
            self._write(write_to, job, {k: array})
            yield k, array
        self._report(job)

    # -- plumbing ------------------------------------------------------------------------------

    async def _prepare(
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
            await self.models()
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

    async def _read_features(self) -> None:
        """``GET /info``, once per client: what the service accepts beyond JSON."""
        try:
            info = await self._request("GET", "/info")
        except InvalidRequest as exc:
            if exc.status_code != 404:
                raise
            info = None  # a service older than /info
        self._learn_features(info)

    async def _run(self, job: EmbedJob) -> AsyncIterator[tuple[int, np.ndarray]]:
        await asyncio.to_thread(job.load_cache)
        tasks = job.tasks(self.transport_format, self._npz_ok)
        if self._wants_features(job, tasks):
            await self._read_features()
            tasks = job.tasks(self.transport_format, self._npz_ok)
        self._check_features(job)
        bar = self._bar(job, tasks)
        # Tasks are started only as earlier ones finish, so that no more than the window's
        # replies exist at once; each is dropped once accepted.
        window = self.max_concurrency * len(self._replicas)
        todo = iter(tasks)
        pending: set[asyncio.Future[tuple[ChunkTask, ChunkResult | None]]] = set()
        mark = self._replicas.start_run()
        try:
            await self._check_replicas()
            for item in job.take_complete():
                yield item
            while True:
                for task in todo:
                    pending.add(asyncio.ensure_future(self._send_chunk(job, task)))
                    if len(pending) >= window:
                        break
                if not pending:
                    break
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failure: BaseException | None = None
                for future in done:
                    if future.exception() is not None:
                        failure = failure or future.exception()
                        continue
                    task, chunk = future.result()
                    # Successful chunks are kept (and cached) even when another failed.
                    if chunk is not None:  # (None: already written to the store)
                        await asyncio.to_thread(job.accept, task, chunk)
                    bar.update(task.n_cells)
                del done
                if failure is not None:
                    raise failure
                for item in job.take_complete():
                    yield item
            job.result()  # raises if a chunk were somehow left out
        finally:
            for future in pending:
                future.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            bar.close()
            self._run_report(job, mark)

    async def _send_chunk(
        self, job: EmbedJob, task: ChunkTask
    ) -> tuple[ChunkTask, ChunkResult | None]:
        """See ``Client._send_chunk``: a chunk for the store is written in a thread of its own."""
        task = self._current(task)
        payload = await self._post(job, task)
        chunk = job.parse(task, payload)
        if job.store is not None:
            await asyncio.to_thread(job.accept, task, chunk)
            return task, None
        return task, chunk

    async def _post(self, job: EmbedJob, task: ChunkTask) -> Any:
        content = job.content(task)
        return await self._request(
            "POST", "/embed", cells=task.n_cells, content=content, headers=job.headers(task)
        )

    async def _request(self, method: str, path: str, *, cells: int = 0, **kwargs: Any) -> Any:
        """Send one request, retrying transient failures; return the decoded reply.

        With several replicas, as in ``Client._request``.
        """
        retry = RetryState(self._policy)
        while True:
            await self._probe_due()
            replica = self._replicas.acquire()
            url = f"{replica.url}{path}"
            started, answered = time.perf_counter(), 0
            try:
                async with replica.http.stream(method, path, **kwargs) as response:
                    body = b"".join([part async for part in response.aiter_bytes()])
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
            if self._sleep is not None:
                waited = self._sleep(delay)
                if inspect.isawaitable(waited):
                    await waited
            else:
                await asyncio.sleep(delay)

    async def _check_replicas(self) -> None:
        """See ``Client._check_replicas``."""
        if len(self._replicas) == 1:
            return
        for replica in self._replicas.replicas:
            if replica.verified:
                continue
            try:
                reply = await replica.http.get("/models", timeout=PROBE_TIMEOUT_S)
                payload = decode_reply(reply)
            except (httpx.HTTPError, *RETRYABLE_ERRORS):
                self._replicas.failed(replica)
                continue
            if not self._same_cards(replica, payload):
                self._replicas.failed(replica)
                replica.probe_at = float("inf")

    async def _probe_due(self) -> None:
        replica = self._replicas.due_probe()
        if replica is not None:
            self._replicas.probed(replica, await self._healthy(replica))

    async def _healthy(self, replica: Replica) -> bool:
        """See ``Client._healthy``."""
        try:
            for path in HEALTH_PATHS:
                response = await replica.http.get(path, timeout=PROBE_TIMEOUT_S)
                if response.status_code != 404:
                    break
            if response.status_code != 200:
                return False
            if not replica.verified:
                reply = await replica.http.get("/models", timeout=PROBE_TIMEOUT_S)
                return self._same_cards(replica, decode_reply(reply))
        except (httpx.HTTPError, *RETRYABLE_ERRORS):
            return False
        return True
