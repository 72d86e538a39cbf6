"""Admitting a request: everything that can fail for a reason in the request, before batching.

The HTTP edge (middleware.py) reads the body and calls :func:`admit` on a worker thread, not
the event loop. Admission parses the body (schemas.py), looks each item's model up, resolves
its layers and poolings, sizes its cells from headers and metadata (uploads.py), checks the
request's limits before anything is materialised, reads and checks the cells, has the backend
check them, and starts tokenizing. A refusal is that request's own 4xx, and nothing of it
reaches an adaptive batch, so it can never fail the requests merged with it (engine.py keeps
what still fails inside a batch to its own item).

Admitted items wait in a table under a ticket: the body BentoML's batching endpoint receives
names tickets only (service.py), and each item's reply comes back through its ticket.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from scstrata_service import coverage
from scstrata_service.contract import MAX_LISTED, InputError, ModelBackend, ModelCard
from scstrata_service.engine import EmbedJob, tokenize_soon
from scstrata_service.layers import LayerError, resolve_layers
from scstrata_service.metrics import record_backlog
from scstrata_service.registry import Registry
from scstrata_service.schemas import (
    EmbedItem,
    EmbedRequest,
    OutputSpec,
    Refused,
    parse_request,
    parse_request_to_arrays,
)
from scstrata_service.settings import SETTINGS, Settings
from scstrata_service.uploads import CellsSource, H5adCells, JsonCells, NpzCells, SizeExceeded


def busy(message: str, settings: Settings = SETTINGS) -> Refused:
    return Refused(503, message, headers={"retry-after": str(settings.retry_after_s)})


@dataclass
class Reply:
    """An HTTP reply made off the event loop, written once by the middleware."""

    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Admitted:
    """One request item, checked, tokenizing, waiting for its dispatch."""

    item: EmbedItem
    card: ModelCard
    job: EmbedJob
    n_cells: int
    n_tokens: int
    deadline: float  # time.monotonic() after which its forward pass is not started
    abandoned: threading.Event = field(default_factory=threading.Event)
    reply: Reply | None = None  # set by the service once the item is done or has failed
    raw_npz: bool = False  # its npz result goes out as the raw .npz (Accept: application/x-npz)
    reached: coverage.Coverage | None = None  # what of its genes and counts reached the model

    def wanted(self) -> bool:
        return not self.abandoned.is_set() and time.monotonic() < self.deadline


class Backlog:
    """Cells and tokens admitted and not yet answered, bounded: over the bound, 503."""

    def __init__(self, max_cells: int, max_tokens: int):
        self.max_cells, self.max_tokens = max_cells, max_tokens
        self.cells = self.tokens = 0
        self._lock = threading.Lock()

    def reserve(self, cells: int, tokens: int) -> None:
        with self._lock:
            empty = self.cells == 0 and self.tokens == 0  # one request alone always fits
            if not empty and (
                self.cells + cells > self.max_cells or self.tokens + tokens > self.max_tokens
            ):
                raise busy(
                    f"busy: {self.cells} cells ({self.tokens} tokens) are queued, the bound is "
                    f"{self.max_cells} cells ({self.max_tokens} tokens); retry after the "
                    "Retry-After seconds"
                )
            self.cells += cells
            self.tokens += tokens
            record_backlog(self.cells, self.tokens)

    def release(self, cells: int, tokens: int) -> None:
        with self._lock:
            self.cells -= cells
            self.tokens -= tokens
            record_backlog(self.cells, self.tokens)

    @property
    def full(self) -> bool:
        with self._lock:
            return self.cells >= self.max_cells or self.tokens >= self.max_tokens


BACKLOG = Backlog(SETTINGS.max_queued_cells, SETTINGS.max_queued_tokens)
_TICKETS: dict[str, Admitted] = {}
_TICKETS_LOCK = threading.Lock()


def admitted(ticket: str) -> Admitted:
    with _TICKETS_LOCK:
        return _TICKETS[ticket]


class Admission:
    """The admitted items of one HTTP request, from admission until its reply is written."""

    def __init__(self, items: list[Admitted], accept_npz: bool):
        self.items, self.accept_npz = items, accept_npz
        self.cells = sum(a.n_cells for a in items)
        self.tokens = sum(a.n_tokens for a in items)
        self.tickets = [secrets.token_hex(16) for _ in items]
        if accept_npz and len(items) == 1:
            items[0].raw_npz = True
        with _TICKETS_LOCK:
            _TICKETS.update(zip(self.tickets, items))

    def replay_body(self) -> bytes:
        """What BentoML's endpoint receives instead of the body: the items' tickets."""
        items = ",".join(
            f'{{"model": "{a.card.name}", "ticket": "{t}"}}'
            for a, t in zip(self.items, self.tickets)
        )
        return f'{{"items": [{items}]}}'.encode()

    def reply(self) -> Reply | None:
        """The request's reply once every item has one: the first failure, a raw .npz, or the
        JSON list of results. None if an item has none (BentoML failed the dispatch)."""
        replies = [a.reply for a in self.items]
        if any(r is None for r in replies):
            return None
        for reply in replies:
            if reply.status != 200:
                return reply
        if len(replies) == 1 and replies[0].content_type != "application/json":
            return replies[0]
        return Reply(200, "application/json", b"[" + b",".join(r.body for r in replies) + b"]")

    def abandon(self) -> None:
        """The client went away: drop the items' work before their forward pass."""
        for item in self.items:
            item.abandoned.set()
            if item.job.tokens is not None and hasattr(item.job.tokens, "cancel"):
                item.job.tokens.cancel()

    def release(self) -> None:
        with _TICKETS_LOCK:
            for ticket in self.tickets:
                _TICKETS.pop(ticket, None)
        BACKLOG.release(self.cells, self.tokens)


def admit(
    body: bytes, registry: Registry, accept_npz: bool, settings: Settings = SETTINGS
) -> Admission:
    """Parse and admit one request body, or raise :class:`Refused` (4xx, or 503 when busy)."""
    request = parse(body, settings)
    if not request.items:
        raise Refused(
            400,
            "items: the list is empty; send one request item per call (docs/api.md)",
            ("items",),
        )
    sized = [_sized(i, item, registry, settings) for i, item in enumerate(request.items)]
    n_cells = sum(s.source.shape[0] for s in sized)
    declared_tokens = sum(s.source.nnz for s in sized)
    _check_request_size(n_cells, declared_tokens, settings)
    BACKLOG.reserve(n_cells, declared_tokens)
    try:
        items = [_admit_item(i, s, settings) for i, s in enumerate(sized)]
        n_tokens = sum(a.n_tokens for a in items)
        _check_request_size(n_cells, n_tokens, settings)  # dense uploads: counted once read
    except BaseException:
        BACKLOG.release(n_cells, declared_tokens)
        raise
    BACKLOG.release(0, declared_tokens - n_tokens)
    return Admission(items, accept_npz)


def parse(body: bytes, settings: Settings = SETTINGS) -> EmbedRequest:
    """The request, parsed here when small, else in a process of its own (schemas.py says
    why); a process that dies takes only this request with it (503)."""
    if len(body) < settings.parse_in_process_bytes:
        return parse_request(body)
    global _PARSE_POOL
    with _PARSE_LOCK:
        if _PARSE_POOL is None:
            context = multiprocessing.get_context("spawn")  # never fork a process holding torch
            _PARSE_POOL = ProcessPoolExecutor(settings.admit_threads, mp_context=context)
        pool = _PARSE_POOL
    try:
        parsed = pool.submit(parse_request_to_arrays, body).result()
    except BrokenProcessPool:
        with _PARSE_LOCK:
            if _PARSE_POOL is pool:
                _PARSE_POOL = None
        raise busy("busy: the process parsing this request stopped; retry it") from None
    if isinstance(parsed, Refused):
        raise parsed
    return parsed


_PARSE_POOL: ProcessPoolExecutor | None = None
_PARSE_LOCK = threading.Lock()


@dataclass
class _Sized:
    """An item whose model, outputs and cells' size are known; its cells not yet read."""

    item: EmbedItem
    backend: ModelBackend
    outputs: list[tuple[str, list[int]]]
    source: CellsSource
    genes: list[str] | None


def _sized(index: int, item: EmbedItem, registry: Registry, settings: Settings) -> _Sized:
    at = ("items", index)
    try:
        backend = registry.get(item.model)
    except KeyError as err:
        raise Refused(400, str(err.args[0]), (*at, "model")) from None
    specs: list[OutputSpec] = [item, *item.extra_outputs]
    if len(specs) > settings.max_outputs_per_request:
        raise Refused(
            422,
            f"extra_outputs: {len(specs)} (layers, pooling) sets exceed the limit of "
            f"{settings.max_outputs_per_request} per request; send several requests",
            (*at, "extra_outputs"),
        )
    outputs = [_resolve(spec, backend.card, at) for spec in specs]
    with _refusing(at):
        source, genes = _source(item, settings)
        n_genes = source.shape[1]
        if n_genes > settings.max_genes_per_request:
            raise SizeExceeded(
                f"genes: {n_genes} genes exceed this server's limit of "
                f"{settings.max_genes_per_request} per request; drop genes the model does not "
                "know before sending"
            )
    return _Sized(item, backend, outputs, source, genes)


@contextlib.contextmanager
def _refusing(at: tuple) -> Iterator[None]:
    """InputError -> 400, SizeExceeded -> 413, for the item at ``at``."""
    try:
        yield
    except SizeExceeded as err:
        raise Refused(413, str(err), at) from None
    except InputError as err:
        raise Refused(400, str(err), at) from None


def _resolve(spec: OutputSpec, card: ModelCard, at: tuple) -> tuple[str, list[int]]:
    try:
        layers = resolve_layers(spec.layers, card.n_layers)
    except LayerError as err:
        raise Refused(400, f"{err} ('{card.name}')", (*at, "layers")) from None
    if spec.pooling not in card.poolings:
        raise Refused(
            400,
            f"pooling: {spec.pooling!r} is not offered by '{card.name}'; "
            f"choose from {sorted(card.poolings)}",
            (*at, "pooling"),
        )
    return spec.pooling, layers


def _source(item: EmbedItem, settings: Settings) -> tuple[CellsSource, list[str] | None]:
    if item.h5ad is not None:
        if item.cells is not None or item.cells_npz is not None or item.genes is not None:
            raise InputError("h5ad: send either h5ad or cells (or cells_npz) + genes, not both")
        upload = H5adCells(item.h5ad, item.h5ad_layer, item.gene_column, settings.max_body_bytes)
        return upload, None
    if item.cells is not None and item.cells_npz is not None:
        raise InputError(
            "cells_npz: send the cells once, either as cells (JSON lists) or as cells_npz, not both"
        )
    given = "cells_npz" if item.cells_npz is not None else "cells"
    if getattr(item, given) is None or item.genes is None:
        missing = [f for f in (given, "genes") if getattr(item, f) is None]
        raise InputError(
            f"{', '.join(missing)}: required (cells or cells_npz, with genes; "
            "or upload an AnnData as h5ad)"
        )
    if item.cells_npz is not None:
        return NpzCells(item.cells_npz, settings.max_body_bytes), item.genes
    cells = item.cells
    return JsonCells(cells.data, cells.indices, cells.indptr, cells.shape), item.genes


def _check_request_size(n_cells: int, n_tokens: int, settings: Settings) -> None:
    """Limits on the whole request (all items together): 413 naming the limit."""
    if n_cells > settings.max_cells_per_request:
        raise Refused(
            413,
            f"cells: {n_cells} cells exceed this server's limit of "
            f"{settings.max_cells_per_request} per request (all items together); send smaller "
            "chunks (the client's chunk_size does this)",
            ("items",),
        )
    if n_tokens > settings.max_tokens_per_request:
        raise Refused(
            413,
            f"cells: {n_tokens} expressed genes (tokens, summed over cells) exceed this "
            f"server's limit of {settings.max_tokens_per_request} per request "
            "(SCSTRATA_MAX_REQUEST_TOKENS); send fewer cells per request (the client's "
            "chunk_size)",
            ("items",),
        )


def _admit_item(index: int, sized: _Sized, settings: Settings) -> Admitted:
    at = ("items", index)
    with _refusing(at):
        counts, file_genes = sized.source.read()
        genes = sized.genes if sized.genes is not None else file_genes
        _check_genes(genes, counts.shape[1])
        # first: names the model does not know explain the family's own refusals below
        reached = coverage.measure(counts, sized.backend.gene_columns(genes))
        coverage.check(
            reached,
            genes,
            sized.backend.card,
            sized.item.min_mapped_fraction,
            _or(sized.item.min_known_genes, settings.min_known_genes),
            len(sized.backend.known_genes()),
        )
        sized.backend.check_input(counts, genes, sized.item.options)
    options = sized.item.options
    job = EmbedJob(
        backend=sized.backend,
        counts=counts,
        genes=genes,
        outputs=sized.outputs,
        options=options,
        # tokenizing starts now, on the engine's pool: it overlaps the dispatch that has the
        # accelerator
        tokens=tokenize_soon(sized.backend, counts, genes, options),
    )
    admitted_item = Admitted(
        item=sized.item,
        card=sized.backend.card,
        job=job,
        n_cells=counts.shape[0],
        n_tokens=int(counts.nnz),
        deadline=time.monotonic() + settings.request_timeout_s,
        reached=reached,
    )
    job.wanted = admitted_item.wanted
    return admitted_item


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _check_genes(genes: list[str], n_columns: int) -> None:
    if len(genes) != n_columns:
        raise InputError(
            f"genes: {len(genes)} names for {n_columns} columns in cells.shape; "
            "send one name per column"
        )
    if len(set(genes)) == len(genes):
        return  # the usual case, without the per-name loop below
    seen: set[str] = set()
    duplicated = sorted({g for g in genes if g in seen or seen.add(g)})
    raise InputError(
        f"genes: duplicate names {duplicated[:MAX_LISTED]}; "
        "sum or drop duplicated columns before sending"
    )
