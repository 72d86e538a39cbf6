"""The synchronous client: HTTP transport and retries around the shared ``EmbedJob``."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx
import numpy as np
import pydantic
from tqdm import tqdm

from ._anndata import write_embeddings
from ._core import EmbedJob
from ._protocol import decode_reply
from ._retry import RETRYABLE_ERRORS, RetryPolicy, RetryState, transport_error
from ._version import __version__
from .exceptions import ProtocolError
from .models import ModelCard

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("scstrata_client")

_CARDS = pydantic.TypeAdapter(list[ModelCard])


class Client:
    """A client of one scstrata service.

    Args:
        url: the service's base URL, e.g. ``"http://localhost:3000"``.
        timeout: seconds allowed for each phase of one HTTP call (connect, send, read).
            Generous by default, because a chunk of cells can take minutes on a busy GPU.
        chunk_size: cells per request. Lower it if the service answers 413.
        max_retries: retries after the first try, for connection failures, timeouts, 429
            and 503. Other errors are never retried.
        backoff: the first retry's base delay in seconds; it doubles at each retry.
        progress: show a progress bar over chunks. ``None`` shows one only when stderr is a
            terminal and there is more than one chunk.
        transport: an ``httpx`` transport to send requests through, instead of the network
            (for proxies, Unix sockets, or tests).

    Use it as a context manager, or call :meth:`close`, to release its connections.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 300.0,
        chunk_size: int = 1000,
        max_retries: int = 5,
        backoff: float = 0.5,
        progress: bool | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        if chunk_size < 1:
            raise ValueError(f"chunk_size: must be at least 1, got {chunk_size}")
        if timeout <= 0:
            raise ValueError(f"timeout: must be positive, got {timeout}")
        self.url = url.rstrip("/")
        self.chunk_size = chunk_size
        self.progress = progress
        self._policy = RetryPolicy(max_retries=max_retries, backoff=backoff)
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": f"scstrata-client/{__version__}"},
        )
        self._sleep = time.sleep  # replaced by tests that must not really wait
        self._cards: list[ModelCard] | None = None

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def models(self) -> list[ModelCard]:
        """The model cards of every model the service serves (``GET /models``)."""
        payload = self._request("GET", "/models")
        try:
            cards = _CARDS.validate_python(payload)
        except pydantic.ValidationError as exc:
            raise ProtocolError(f"GET {self.url}/models: malformed model cards: {exc}") from exc
        self._cards = cards
        return cards

    def embed(
        self,
        X: Any,
        genes: Sequence[str] | None = None,
        *,
        model: str,
        layers: int | Sequence[int] | Literal["all"] = "all",
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

        Cells are sent ``chunk_size`` at a time and reassembled in input order; a reply
        with a missing or extra cell raises ``ProtocolError``.
        """
        job = EmbedJob.plan(
            X,
            genes,
            model=model,
            layers=layers,
            pooling=pooling,
            options=options,
            chunk_size=self.chunk_size,
        )
        n_layers = None
        if write_to is not None:
            if write_to.n_obs != job.n_cells:
                raise ValueError(
                    f"write_to: has {write_to.n_obs} cells but X has {job.n_cells}; "
                    "pass the AnnData the counts came from"
                )
            # Known before the (long) embedding, so a failure here costs nothing.
            n_layers = None if job.layers == "all" else self._n_layers(model)

        with tqdm(
            total=len(job.ranges),
            disable=not self._show_progress(len(job.ranges)),
            unit="chunk",
            desc=f"embed {model}",
        ) as bar:
            for i in range(len(job.ranges)):
                job.accept(i, self._request("POST", "/embed", json=job.body(i)))
                bar.update(1)
        result = job.result()

        if job.n_unmapped_genes:
            logger.info(
                "%s: %d of %d genes are not in the model's vocabulary (e.g. %s)",
                model,
                job.n_unmapped_genes,
                len(job.genes),
                ", ".join(job.unmapped_genes[:5]),
            )
        if write_to is not None:
            if job.layers == "all":
                n_layers = max(result)  # "all" is 0..L
            write_embeddings(
                write_to,
                result,
                url=self.url,
                model=model,
                pooling=pooling,
                options=job.options,
                n_layers=n_layers,
                n_unmapped_genes=job.n_unmapped_genes,
            )
        return result

    def _n_layers(self, model: str) -> int | None:
        cards = self._cards if self._cards is not None else self.models()
        for card in cards:
            if card.name == model:
                return card.n_layers
        return None  # an unknown model: the service's 4xx will say so

    def _show_progress(self, n_chunks: int) -> bool:
        if self.progress is not None:
            return self.progress
        return n_chunks > 1 and sys.stderr.isatty()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request, retrying transient failures; return the decoded JSON reply."""
        url = f"{self.url}{path}"
        retry = RetryState(self._policy)
        while True:
            try:
                return decode_reply(self._http.request(method, path, **kwargs))
            except RETRYABLE_ERRORS as exc:
                delay = retry.failed(exc, method, url)
            except httpx.HTTPError as exc:
                raise transport_error(exc, method, url) from exc
            logger.debug("%s %s: retrying in %.2f s", method, url, delay)
            self._sleep(delay)
