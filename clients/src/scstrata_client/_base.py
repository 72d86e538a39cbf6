"""What ``Client`` and ``AsyncClient`` share: settings, model cards, planning, AnnData output.

Nothing here sends a request; the two clients differ only in how they send and wait.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import httpx
import numpy as np
import pydantic
from tqdm.auto import tqdm

from ._anndata import write_embeddings
from ._cache import DEFAULT_MAX_BYTES, ChunkCache, default_cache_dir
from ._core import ChunkTask, EmbedJob, TransportChoice
from ._protocol import _is_int
from ._replicas import Replica, ReplicaSet, RunReport, parse_urls
from ._retry import DEFAULT_MAX_RETRIES, RetryPolicy
from ._version import __version__
from .exceptions import ProtocolError, UnmappedGenesWarning
from .models import ModelCard
from .store import EmbeddingStore

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("scstrata_client")

TOKEN_ENV = "SCSTRATA_TOKEN"
# Chunks of a few hundred cells, eight in flight: the service merges them into shared forward
# passes while the next ones are sent and tokenized, and the accelerator waits little for the
# first chunk or on the last. Measured against bigger chunks in bench/RESULTS.md.
DEFAULT_CHUNK_SIZE = 256
DEFAULT_MAX_CONCURRENCY = 8
_CARDS = pydantic.TypeAdapter(list[ModelCard])


class Cancelled(Exception):
    """Internal: a chunk's retries stopped because the run they belong to was given up."""


class ClientBase:
    """Settings and transport-independent logic of both clients (see ``Client``)."""

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
    ):
        if chunk_size < 1:
            raise ValueError(f"chunk_size: must be at least 1, got {chunk_size}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency: must be at least 1, got {max_concurrency}")
        if timeout <= 0:
            raise ValueError(f"timeout: must be positive, got {timeout}")
        if transport_format not in get_args(TransportChoice):
            raise ValueError(
                f"transport_format: expected 'auto', 'json' or 'npz', got {transport_format!r}"
            )
        self.urls = parse_urls(url)
        self.url = self.urls[0]
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self.progress = progress
        self.transport_format: TransportChoice = transport_format
        self.timeout = timeout
        self._policy = RetryPolicy(max_retries=max_retries, backoff=backoff)
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._token = token or None
        self.cache: ChunkCache | None = None
        if cache:
            directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            self.cache = ChunkCache(directory, cache_max_bytes)
        self._cards: list[ModelCard] | None = None
        # What the service offers beyond JSON (GET /info's "features"), read once, when a run
        # would first use any of it; None until then
        self._features: frozenset[str] | None = None
        # Replaced by tests that must not really wait: called with each retry delay.
        self._sleep: Any = None
        self._replicas: ReplicaSet  # set by each client, with its own HTTP clients
        self.last_run: RunReport | None = None
        """Cells sent where, and at what rate, by the last ``embed`` or ``sweep``."""

    def __repr__(self) -> str:
        # Never the token.
        urls = self.url if len(self.urls) == 1 else self.urls
        return f"{type(self).__name__}({urls!r})"

    def _replica_set(self, make_http: Any) -> ReplicaSet:
        return ReplicaSet([Replica(u, make_http(**self._http_settings(u))) for u in self.urls])

    def _http_settings(self, url: str | None = None) -> dict[str, Any]:
        headers = {"User-Agent": f"scstrata-client/{__version__}"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return {
            "base_url": url or self.url,
            "timeout": self.timeout,
            "headers": headers,
            "limits": httpx.Limits(
                max_connections=max(10, self.max_concurrency),
                max_keepalive_connections=self.max_concurrency,
            ),
        }

    # -- model cards ---------------------------------------------------------------------------

    def _parse_cards(self, payload: Any) -> list[ModelCard]:
        try:
            cards = _CARDS.validate_python(payload)
        except pydantic.ValidationError as exc:
            raise ProtocolError(f"GET {self.url}/models: malformed model cards: {exc}") from exc
        self._cards = cards
        return cards

    def _same_cards(self, replica: Replica, payload: Any) -> bool:
        """True if ``replica`` serves the same model cards as the rest (checked once)."""
        try:
            cards = _CARDS.validate_python(payload)
        except pydantic.ValidationError:
            cards = None
        replica.verified = cards == self._cards
        if not replica.verified:
            logger.warning(
                "%s serves other models or weights than %s (GET /models differs); "
                "it is left out, so that results are never mixed",
                replica.url,
                self.url,
            )
        return replica.verified

    def _run_report(self, job: EmbedJob, mark: Any) -> None:
        self.last_run = report = self._replicas.report(mark)
        if len(self._replicas) > 1:
            logger.info("%s: %s", job.model, report.summary())

    @staticmethod
    def _check_out(out: Any, write_to: AnnData | None) -> None:
        if out is None:
            return
        if not isinstance(out, str | os.PathLike):
            raise TypeError(f"out: expected a path such as 'layers.zarr', got {type(out).__name__}")
        if write_to is not None:
            raise ValueError(
                "out and write_to: pick one (a streamed run keeps the layers in the store; "
                "open them with store.to_dask(k) to put them in an AnnData)"
            )

    def _card(self, model: str) -> ModelCard | None:
        for card in self._cards or ():
            if card.name == model:
                return card
        return None  # an unknown model: the service's 4xx will say so

    # -- planning ------------------------------------------------------------------------------

    def _plan(
        self,
        X: Any,
        genes: Sequence[str] | None,
        *,
        model: str,
        layers: Any,
        pooling: str,
        options: Mapping[str, Any] | None,
        write_to: AnnData | None,
        extra_outputs: Sequence[Any] | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> EmbedJob:
        job = EmbedJob.plan(
            X,
            genes,
            model=model,
            layers=layers,
            pooling=pooling,
            options=options,
            chunk_size=self.chunk_size,
            card=self._card(model),
            cache=self.cache,
            extra_outputs=extra_outputs,
            fields=fields,
        )
        if write_to is not None and write_to.n_obs != job.n_cells:
            raise ValueError(
                f"write_to: has {write_to.n_obs} cells but X has {job.n_cells}; "
                "pass the AnnData the counts came from"
            )
        return job

    @staticmethod
    def _coverage_fields(
        min_known_genes: int | None, min_mapped_fraction: float | None
    ) -> dict[str, Any]:
        """The item fields of the service's gene checks that the caller set (docs/api.md)."""
        fields: dict[str, Any] = {}
        if min_known_genes is not None:
            if not _is_int(min_known_genes) or min_known_genes < 0:
                raise ValueError(
                    f"min_known_genes: expected a count of genes >= 0, got {min_known_genes!r}"
                )
            fields["min_known_genes"] = int(min_known_genes)
        if min_mapped_fraction is not None:
            if not isinstance(min_mapped_fraction, int | float) or not (
                0 <= min_mapped_fraction <= 1
            ):
                raise ValueError(
                    f"min_mapped_fraction: expected a share in 0..1, got {min_mapped_fraction!r}"
                )
            fields["min_mapped_fraction"] = float(min_mapped_fraction)
        return fields

    @staticmethod
    def _check_layer(layer: Any) -> int:
        if not _is_int(layer):
            raise TypeError(f"layer: expected one layer index (an int), got {layer!r}")
        return int(layer)

    @property
    def _npz_ok(self) -> bool:
        return self._features is None or "npz" in self._features

    def _wants_features(self, job: EmbedJob, tasks: list[ChunkTask]) -> bool:
        """True when the service's features are unknown and this run would use one."""
        if self._features is not None:
            return False
        return bool(job.extra) or any(t.format == "npz" or t.cells_npz for t in tasks)

    def _learn_features(self, info: Any) -> None:
        """Keep what ``GET /info`` says the service accepts; None (no /info: a service older
        than it) means JSON only, as does an /info without ``features``."""
        features = info.get("features") if isinstance(info, Mapping) else None
        if not isinstance(features, list):
            features = ["json"]
        self._features = frozenset(str(f) for f in features)
        if not self._npz_ok:
            if self.transport_format == "npz":
                raise ValueError(
                    f"transport_format: {self.url} does not offer the npz transport (GET /info "
                    "features); use 'auto' or 'json'"
                )
            logger.info("%s offers JSON only (GET /info); sending and receiving JSON", self.url)

    def _check_features(self, job: EmbedJob) -> None:
        if job.extra and self._features is not None and "extra_outputs" not in self._features:
            raise ValueError(
                f"extra_outputs: {self.url} does not offer several poolings from one pass "
                "(GET /info features); call embed once per pooling"
            )

    def _current(self, task: ChunkTask) -> ChunkTask:
        """The task as the service can take it: JSON under ``auto`` when it offers no npz,
        JSON cells when it offers no ``cells_npz``."""
        features = self._features
        if features is None:
            return task
        if task.format == "npz" and "npz" not in features:
            return task.as_json()
        if task.cells_npz and "cells_npz" not in features:
            return task.with_json_cells()
        return task

    # -- progress ------------------------------------------------------------------------------

    def _show_progress(self, n_chunks: int) -> bool | None:
        """True/False as asked; by default (None) tqdm's own rule decides when more than one
        request is needed: a bar on a terminal, a widget in a notebook (whose stderr is no
        terminal), nothing in a log file."""
        if self.progress is not None:
            return self.progress
        return None if n_chunks > 1 else False

    def _bar(self, job: EmbedJob, tasks: list[ChunkTask]) -> tqdm:
        """Cells done out of all; the cells no request is needed for (cached, or in the
        store already) count as done from the start."""
        n_tasks = len(tasks)
        return tqdm(
            total=job.n_cells,
            initial=job.n_cells - sum(t.n_cells for t in tasks),
            disable=_tqdm_disable(self._show_progress(n_tasks)),
            unit="cell",
            unit_scale=True,
            # Replies come in bursts (several chunks in flight finish together, after a wait as
            # long as a chunk takes): the rate is the average since the start (smoothing=0), not
            # a moving average of bursts, so the ETA holds; every reply is shown as it arrives
            # (tqdm would otherwise skip redraws after a burst)
            smoothing=0,
            miniters=1,
            mininterval=0,
            desc=f"{job.model} ({n_tasks} chunk{'s' if n_tasks != 1 else ''})",
        )

    # -- results -------------------------------------------------------------------------------

    def _report(self, job: EmbedJob) -> None:
        """Warn (Python ``warnings``) when genes were dropped: the model saw less of each cell.
        Too few to embed at all is the server's 400 (``min_mapped_fraction``)."""
        if job.n_unmapped_genes:
            warnings.warn(
                f"{job.model}: {job.n_unmapped_genes} of {len(job.genes)} genes "
                f"({job.n_unmapped_genes / max(len(job.genes), 1):.1%}) are not in the model's "
                f"vocabulary and were dropped (e.g. {', '.join(job.unmapped_genes[:5])}); "
                "their counts did not reach the model",
                UnmappedGenesWarning,
                stacklevel=4,
            )

    @staticmethod
    def _stores(job: EmbedJob) -> EmbeddingStore | dict[str, EmbeddingStore]:
        """A streamed run's store; with extra outputs, each pooling's, by pooling."""
        stores = {j.pooling: j.store for j in job.outputs if j.store is not None}
        assert len(stores) == len(job.outputs)
        return stores if job.extra else stores[job.pooling]

    def _results(
        self,
        job: EmbedJob,
        layers: dict[int, np.ndarray],
        write_to: AnnData | None,
        key_added: str | None,
    ) -> dict[int, np.ndarray] | dict[str, dict[int, np.ndarray]]:
        """``layers`` (the call's pooling); with extra outputs, every pooling's, by pooling,
        each written to ``write_to`` under keys of its own."""
        if not job.extra:
            self._write(write_to, job, layers, key_added)
            return layers
        results = {job.pooling: layers, **{x.pooling: x.result() for x in job.extra}}
        for output in job.outputs:
            self._write(write_to, output, results[output.pooling], key_added)
        return results

    def _write(
        self,
        write_to: AnnData | None,
        job: EmbedJob,
        layers: Mapping[int, np.ndarray],
        key_added: str | None = None,
    ) -> None:
        if write_to is None or not layers:
            return
        n_layers: int | None = None
        if job.card is not None:
            n_layers = job.card.n_layers
        elif job.layers == "all" and job.wanted:
            n_layers = max(job.wanted)  # "all" is 0..L
        write_embeddings(
            write_to,
            layers,
            url=self.url,
            model=job.model,
            pooling=job.pooling,
            options=job.options,
            n_layers=n_layers,
            n_unmapped_genes=job.n_unmapped_genes,
            checkpoint_digest=job.card.checkpoint_digest if job.card is not None else None,
            key_added=key_added,
        )


def _tqdm_disable(show: bool | None) -> bool | None:
    return None if show is None else not show
