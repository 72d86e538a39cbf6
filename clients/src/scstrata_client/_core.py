"""One ``embed`` call, independent of how its HTTP requests are sent.

``EmbedJob`` plans the chunks, looks them up in the cache (or, streaming, in its zarr store),
decides what each chunk still needs (``tasks``), builds each request's body (reading the
chunk's rows from its source only then), parses each reply and puts it in place (or writes it
to the store). Chunks
may be accepted in any order (the clients send them concurrently); every layer is handed
out only once all of its chunks are in, always in input row order, and a reply with a
missing, extra or unasked-for row or layer raises ``ProtocolError`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from ._cache import (
    ChunkCache,
    digest_card,
    digest_chunk,
    digest_genes,
    digest_options,
    result_key,
)
from ._inputs import chunk_ranges
from ._protocol import (
    NPZ_MEDIA_TYPE,
    ChunkResult,
    TransportFormat,
    build_item,
    normalise_layers,
    parse_embed_reply,
    request_body,
    request_content,
    resolve_layers,
)
from ._source import RowSource, open_rows
from .exceptions import ProtocolError
from .models import ModelCard
from .store import EmbeddingStore, InputSpec, StoreSpec, digest_structure, open_store

logger = logging.getLogger("scstrata_client")

TransportChoice = Literal["auto", "json", "npz"]

# "auto" asks for the binary npz reply once a chunk's result holds more floats than this:
# below it, JSON costs little and stays readable in a proxy log.
NPZ_AUTO_THRESHOLD = 200_000
# ... or once the chunk's request holds more stored non-zeros than this, whatever its reply:
# with npz the cells go as binary ``cells_npz``. For 512 cells with 1.2 M non-zeros, JSON lists
# took 0.32 s to build against 0.064 s for cells_npz, and 0.21 s against 0.061 s for the
# service to parse: about 0.34 us per non-zero saved, so ~34 ms per request at 100,000 (e.g.
# 64 cells x 2,000 expressed genes, whose one-layer 768-dim reply is far below the float rule),
# while a smaller chunk saves only a few ms and keeps a readable JSON body.
NPZ_AUTO_NNZ_THRESHOLD = 100_000


@dataclass(frozen=True)
class OutputTask:
    """One more (pooling, layers) set a request asks for: the job's output ``output``."""

    output: int
    layers: int | list[int] | Literal["all"]
    expected: tuple[int, ...] | None


@dataclass(frozen=True)
class ChunkTask:
    """One request to send: chunk ``index`` (rows ``start:stop``) for ``layers``."""

    index: int
    start: int
    stop: int
    layers: int | list[int] | Literal["all"]
    """The layers as sent: the caller's own form when every layer is needed, else a list."""
    expected: tuple[int, ...] | None
    """The resolved layers the reply must hold exactly; None when unknown (no model card)."""
    format: TransportFormat = "json"
    cells_npz: bool = False
    """Send the cells as the binary ``cells_npz`` field (with the npz transport)."""
    main: int = 0
    """Whose layers ``layers`` are: the job's output 0 (the call's pooling) or extra output i."""
    extras: tuple[OutputTask, ...] = ()
    """Further outputs the request asks for, as its ``extra_outputs``, from the same pass."""

    @property
    def n_cells(self) -> int:
        return self.stop - self.start

    def as_json(self) -> ChunkTask:
        """JSON both ways: for a service that predates the npz transport."""
        return replace(self, format="json", cells_npz=False)

    def with_json_cells(self) -> ChunkTask:
        """The same reply format, cells as JSON lists: for a service without ``cells_npz``."""
        return replace(self, cells_npz=False)


@dataclass
class EmbedJob:
    source: RowSource
    """The cells, read a chunk at a time (``_source``)."""
    model: str
    layers: int | list[int] | Literal["all"]
    pooling: str
    options: dict[str, Any]
    ranges: list[tuple[int, int]]
    card: ModelCard | None = None
    wanted: list[int] | None = None
    """Resolved layer indices; None until the first reply when there is no model card."""
    dim: int | None = None
    cache: ChunkCache | None = None
    n_unmapped_genes: int | None = None
    unmapped_genes: list[str] = field(default_factory=list)
    _out: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _have: dict[int, set[int]] = field(default_factory=dict, repr=False)
    _handed_out: set[int] = field(default_factory=set, repr=False)
    store: EmbeddingStore | None = None
    """Where a streamed run writes each chunk (``out=``); None keeps the result in memory."""
    _blocks: list[tuple[int, int]] = field(default_factory=list, repr=False)
    """The cache's entries: row ranges of ``cache.block_rows``, whatever the chunk size."""
    _block_keys: dict[int, str] = field(default_factory=dict, repr=False)
    _block_needs: dict[int, list[int]] = field(default_factory=dict, repr=False)
    """Blocks still to be cached, with the layers their replies must bring."""
    _entries: dict[int, dict[int, np.ndarray]] = field(default_factory=dict, repr=False)
    """What a block still to be cached held already (rewritten with the layers to come)."""
    _digests: dict[int, str] = field(default_factory=dict, repr=False)
    _written: set[int] = field(default_factory=set, repr=False)
    _meta_key: str | None = field(default=None, repr=False)
    _genes_digest: str | None = field(default=None, repr=False)
    extra: list[EmbedJob] = field(default_factory=list)
    """Jobs for the ``extra_outputs``: other poolings of the same cells, from the same pass."""
    fields: dict[str, Any] = field(default_factory=dict)
    """Further item fields every request carries (``min_known_genes``, ...)."""

    @classmethod
    def plan(
        cls,
        X: Any,
        genes: Sequence[str] | None,
        *,
        model: str,
        layers: Any,
        pooling: str,
        options: Mapping[str, Any] | None,
        chunk_size: int,
        card: ModelCard | None = None,
        cache: ChunkCache | None = None,
        extra_outputs: Sequence[str | Mapping[str, Any]] | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> EmbedJob:
        """Validate every argument locally, so that mistakes fail before any request.

        With the model's ``card``, layers are resolved here (so that the cache can be keyed
        by layer index) and the reply's dimension is known in advance. Without it, or when
        the card says the request is wrong (a layer out of range, an unknown pooling), the
        request is sent as it is and the service's 4xx explains; the cache is then unused.
        Each of ``extra_outputs`` (a pooling name, or ``{"pooling", "layers"}`` with layers
        defaulting to ``layers``) becomes a job of its own in ``extra``, over the same cells,
        asked for in the same requests.
        """
        if not isinstance(model, str) or not model:
            raise ValueError(f"model: expected a model name (see Client.models()), got {model!r}")
        if not isinstance(pooling, str) or not pooling:
            raise ValueError(f"pooling: expected a pooling name, got {pooling!r}")
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"options: expected a dict, got {type(options).__name__}")
        source = open_rows(X, genes)
        specs = extra_specs(extra_outputs, layers, pooling)
        job = cls._planned(source, model, layers, pooling, options, chunk_size, card, cache)
        job.extra = [
            cls._planned(source, model, k, p, options, chunk_size, card, cache) for p, k in specs
        ]
        job.fields = dict(fields or {})
        return job

    @classmethod
    def _planned(
        cls,
        source: RowSource,
        model: str,
        layers: Any,
        pooling: str,
        options: Mapping[str, Any] | None,
        chunk_size: int,
        card: ModelCard | None,
        cache: ChunkCache | None,
    ) -> EmbedJob:
        wire = normalise_layers(layers)
        wanted = dim = None
        if card is not None:
            wanted = resolve_layers(wire, card.n_layers)
            dim = card.poolings.get(pooling)
            if wanted is None or dim is None:
                wanted = dim = None
        if wanted is None or card is None or not card.checkpoint_digest:
            cache = None  # nothing trustworthy to key results on
        return cls(
            source=source,
            model=model,
            layers=wire,
            pooling=pooling,
            options=dict(options or {}),
            ranges=chunk_ranges(source.n_cells, chunk_size),
            card=card,
            wanted=wanted,
            dim=dim,
            cache=cache,
        )

    @property
    def n_cells(self) -> int:
        return self.source.n_cells

    @property
    def genes(self) -> list[str]:
        return self.source.genes

    def rows(self, i: int) -> sp.csr_matrix:
        """The canonical cells of chunk ``i`` (read from the source now)."""
        start, stop = self.ranges[i]
        return self.source.rows(start, stop)

    def chunk_digest(self, i: int, cells: sp.csr_matrix | None = None) -> str:
        """The data digest of chunk ``i`` (its cells and gene names)."""
        if self._genes_digest is None:
            self._genes_digest = digest_genes(self.genes)
        return digest_chunk(self.rows(i) if cells is None else cells, self._genes_digest)

    @property
    def n_chunks(self) -> int:
        return len(self.ranges)

    # -- cache ---------------------------------------------------------------------------------

    @property
    def outputs(self) -> list[EmbedJob]:
        """This job's own output (0) and its extra outputs' jobs (1...), as tasks number them."""
        return [self, *self.extra]

    def done_cells(self) -> int:
        """Cells of the chunks no output needs anything for."""
        return sum(
            stop - start
            for i, (start, stop) in enumerate(self.ranges)
            if all(job.missing(i) == [] for job in self.outputs)
        )

    def load_cache(self) -> int:
        """Fill in every (row, layer) the cache holds, for every output; return the cells
        needing no request."""
        for job in self.outputs:
            job._load_cache()
        return self.done_cells()

    def _load_cache(self) -> None:
        """Entries are blocks of ``cache.block_rows`` rows counted from the first cell, keyed
        by their cells' content, so a run with another ``chunk_size`` finds them all the same:
        a chunk needs no request for a layer when every block it overlaps holds that layer.
        """
        if self.cache is None or self.wanted is None or self.card is None or self.store:
            return
        common = {
            "model": self.model,
            "card_digest": digest_card(self.card.model_dump(mode="json")),
            "options_digest": digest_options(self.options),
        }
        genes_digest = digest_genes(self.genes)
        self._meta_key = result_key(genes_digest, pooling="unmapped", **common)
        meta = self.cache.get_meta(self._meta_key)
        if meta is not None and self.n_unmapped_genes is None:
            self.n_unmapped_genes = int(meta.get("n_unmapped_genes", 0))
            self.unmapped_genes = [str(g) for g in meta.get("unmapped_genes", [])]
        self._blocks = chunk_ranges(self.n_cells, self.cache.block_rows)
        cached: dict[int, set[int]] = {k: set() for k in self.wanted}  # layer -> blocks
        for b, (start, stop) in enumerate(self._blocks):
            data = digest_chunk(self.source.rows(start, stop), genes_digest)
            key = result_key(data, pooling=self.pooling, **common)
            entry = self.cache.get(key, stop - start, self.dim) or {}
            for k in self.wanted:
                if k in entry:
                    self._output(k, entry[k].shape[1])[start:stop] = entry[k]
                    cached[k].add(b)
            needs = [k for k in self.wanted if k not in entry]
            if needs:
                self._block_keys[b], self._block_needs[b] = key, needs
                if entry:
                    self._entries[b] = entry
        for i, (start, stop) in enumerate(self.ranges):
            for k in self.wanted:
                if cached[k].issuperset(self._blocks_of(start, stop)):
                    self._have.setdefault(k, set()).add(i)

    def _blocks_of(self, start: int, stop: int) -> range:
        """The cache blocks that rows ``start:stop`` overlap."""
        rows = self.cache.block_rows if self.cache is not None else 1
        return range(start // rows, (stop - 1) // rows + 1)

    def _cache_blocks(self, i: int) -> None:
        """Write every block that chunk ``i``'s reply completed (all the layers it needed)."""
        assert self.cache is not None
        start, stop = self.ranges[i]
        for b in self._blocks_of(start, stop):
            needs = self._block_needs.get(b)
            if needs is None:
                continue
            first, last = self._blocks[b]
            size = self.ranges[0][1]  # the chunk size
            chunks = range(first // size, (last - 1) // size + 1)  # those the block overlaps
            if all(self._have.get(k, set()).issuperset(chunks) for k in needs):
                layers = {k: self._out[k][first:last] for k in needs}
                self.cache.put(self._block_keys.pop(b), {**self._entries.pop(b, {}), **layers})
                del self._block_needs[b]

    # -- streaming to a store ------------------------------------------------------------------

    def store_spec(self) -> StoreSpec:
        """What a store must have been written with for this job to resume it."""
        card = self.card
        if card is None or self.wanted is None or self.dim is None or not card.checkpoint_digest:
            raise ValueError(
                f"out: streaming to a store needs the model card of {self.model!r} with a "
                "checkpoint_digest (GET /models), and layers and pooling it offers"
            )
        indptr = getattr(self.source, "indptr", None)
        n_genes = len(self.genes)
        return StoreSpec(
            model=self.model,
            pooling=self.pooling,
            layers=list(self.wanted),
            dim=self.dim,
            chunk_size=self.ranges[0][1] - self.ranges[0][0],
            card_digest=digest_card(card.model_dump(mode="json")),
            checkpoint_digest=card.checkpoint_digest,
            options=self.options,
            input=InputSpec(
                n_cells=self.n_cells,
                n_genes=n_genes,
                data_digest=digest_structure(self.genes, self.n_cells, indptr),
            ),
        )

    def open_store(self, path: Any) -> int:
        """Stream this job (each of its outputs into its own ``<model>/<pooling>`` group) into
        the store at ``path``; return the cells every output has written there already.

        Every chunk the store says is done is checked against the input (its data digest)
        before anything is sent, so a store from other cells is refused, never mixed into.
        """
        for job in self.outputs:
            job._open_store(path)
        return self.done_cells()

    def _open_store(self, path: Any) -> None:
        store = open_store(path, self.store_spec())
        done = store.done_chunks()
        for i in sorted(done):
            store.verify_chunk(i, self.chunk_digest(i))
        self.store = store
        self._written = set(done)

    # -- requests ------------------------------------------------------------------------------

    def missing(self, i: int) -> list[int] | None:
        """Layers chunk ``i`` still needs (None: all, unknown which until a reply)."""
        if self.wanted is None:
            return None
        if self.store is not None:
            return [] if i in self._written else list(self.wanted)
        return [k for k in self.wanted if i not in self._have.get(k, ())]

    def tasks(
        self, transport_format: TransportChoice = "json", npz_ok: bool = True
    ) -> list[ChunkTask]:
        """One request per chunk that still needs a layer, asking for all it needs at once.

        A chunk sent with the npz transport also sends its cells as ``cells_npz``. Under
        ``"auto"``, a chunk uses npz when its reply is large (``NPZ_AUTO_THRESHOLD`` floats,
        once the layers and dim are known) or its cells are (``NPZ_AUTO_NNZ_THRESHOLD``
        non-zeros, known from the start), unless ``npz_ok`` is false.
        """
        tasks = []
        for i, (start, stop) in enumerate(self.ranges):
            asks = [(o, job, job.missing(i)) for o, job in enumerate(self.outputs)]
            asks = [(o, job, need) for o, job, need in asks if need != []]
            if not asks:
                continue
            # the first output that needs something is the request's own; the rest go as its
            # extra_outputs
            outputs = [OutputTask(o, *job._ask(need)) for o, job, need in asks]
            floats: int | None = 0
            for _, job, need in asks:
                if need is None or job.dim is None or floats is None:
                    floats = None
                else:
                    floats += (stop - start) * len(need) * job.dim
            nnz = self.source.nnz(start, stop)
            fmt = self._format(nnz, floats, transport_format, npz_ok)
            main, *extras = outputs
            tasks.append(
                ChunkTask(
                    i, start, stop, main.layers, main.expected, fmt, fmt == "npz",
                    main=main.output, extras=tuple(extras),
                )
            )  # fmt: skip
        return tasks

    def _ask(self, need: list[int] | None) -> tuple[Any, tuple[int, ...] | None]:
        """The layers to send for ``need`` (the caller's own form when all are needed) and
        those the reply must hold (None: unknown, no model card)."""
        if need is None:
            return self.layers, None
        return (self.layers if need == self.wanted else list(need)), tuple(need)

    @staticmethod
    def _format(
        nnz: int | None,
        floats: int | None,
        choice: TransportChoice,
        npz_ok: bool,
    ) -> TransportFormat:
        """``floats``: what the reply holds (None: unknown before the first reply)."""
        if choice in ("json", "npz"):
            return choice
        if not npz_ok:
            return "json"  # a service that refused npz: JSON both ways
        if nnz is None or nnz > NPZ_AUTO_NNZ_THRESHOLD:
            # (None: a dense backed matrix, whose non-zeros are only known once read.)
            # A large request, even before the reply's size is known (no model card): a raw
            # npz reply is checked like a JSON one, against the card or else the first reply.
            return "npz"
        if floats is None:
            return "json"
        return "npz" if floats > NPZ_AUTO_THRESHOLD else "json"

    def _task(self, task: ChunkTask | int) -> ChunkTask:
        if isinstance(task, ChunkTask):
            return task
        start, stop = self.ranges[task]
        outputs = [OutputTask(o, job.layers, job._expected()) for o, job in enumerate(self.outputs)]
        main, *extras = outputs
        return ChunkTask(task, start, stop, main.layers, main.expected, extras=tuple(extras))

    def _expected(self) -> tuple[int, ...] | None:
        return tuple(self.wanted) if self.wanted is not None else None

    def body(self, task: ChunkTask | int) -> dict[str, Any]:
        """The JSON body of a task (or of chunk ``i`` asking for every layer, as JSON)."""
        task = self._task(task)
        cells = self.rows(task.index)
        outputs = self.outputs
        if self.store is not None:
            # What the store marks the chunk done with; taken here, where the cells are read.
            digest = self.chunk_digest(task.index, cells)
            for job in outputs:
                job._digests[task.index] = digest
        item = build_item(
            cells,
            self.genes,
            model=self.model,
            layers=task.layers,
            pooling=outputs[task.main].pooling,
            options=self.options,
            format=task.format,
            cells_npz=task.cells_npz,
            extra_outputs=[
                {"layers": x.layers, "pooling": outputs[x.output].pooling} for x in task.extras
            ],
            fields=self.fields,
        )
        return request_body(item)

    def content(self, task: ChunkTask | int) -> bytes:
        """The body of a task as the JSON bytes to send (with :meth:`headers`)."""
        return request_content(self.body(task))

    @staticmethod
    def headers(task: ChunkTask) -> dict[str, str]:
        """HTTP headers of a task's request: JSON out; npz tasks ask for the raw binary reply."""
        headers = {"Content-Type": "application/json"}
        if task.format == "npz":
            headers["Accept"] = NPZ_MEDIA_TYPE
        return headers

    # -- replies -------------------------------------------------------------------------------

    def parse(self, task: ChunkTask | int, payload: Any) -> ChunkResult:
        """Parse and check the reply to ``task``; touches no state (safe in any thread)."""
        task = self._task(task)
        outputs = self.outputs
        main = outputs[task.main]
        chunk = parse_embed_reply(
            payload, task.n_cells, model=self.model, pooling=main.pooling, n_extra=len(task.extras)
        )
        main._check(task.index, task.expected, chunk.layers)
        for extra, layers in zip(task.extras, chunk.extras):
            outputs[extra.output]._check(task.index, extra.expected, layers)
        return chunk

    def _check(
        self, index: int, expected: tuple[int, ...] | None, layers: Mapping[int, np.ndarray]
    ) -> None:
        if expected is not None and tuple(layers) != expected:
            raise ProtocolError(
                f"chunk {index}: asked for layers {list(expected)} of pooling {self.pooling!r}, "
                f"the reply holds {sorted(layers)}"
            )
        dims = {array.shape[1] for array in layers.values()}
        if self.dim is not None and dims != {self.dim}:
            raise ProtocolError(
                f"chunk {index}: rows have {sorted(dims)} values, the model card says "
                f"{self.dim} for pooling {self.pooling!r}"
            )

    def accept(self, task: ChunkTask | int, reply: Any) -> ChunkResult:
        """Put the reply to ``task`` (parsed or not) in place and in the cache, or, streaming,
        write it to the store (safe from the chunk's own thread: chunks write their own rows)."""
        task = self._task(task)
        chunk = reply if isinstance(reply, ChunkResult) else self.parse(task, reply)
        outputs = self.outputs
        outputs[task.main]._take(task.index, chunk.layers, chunk)
        for extra, layers in zip(task.extras, chunk.extras):
            outputs[extra.output]._take(task.index, layers, chunk)
        return chunk

    def _take(self, i: int, layers: dict[int, np.ndarray], chunk: ChunkResult) -> None:
        """Chunk ``i``'s ``layers`` of this job's pooling, in place, cached or stored."""
        if self.wanted is None:
            # No card: the first reply fixes the layer set and dimension every other must match.
            if not self._out:
                self.wanted = sorted(layers)
            elif sorted(layers) != self.wanted:
                raise ProtocolError(
                    f"chunk {i} returned layers {sorted(layers)}, "
                    f"earlier chunks returned {self.wanted}"
                )
        if self.store is not None:
            digest = self._digests.pop(i, None) or self.chunk_digest(i)
            self.store.write_chunk(i, layers, digest)
            self._written.add(i)
        else:
            for k, array in layers.items():
                self._place(i, k, array)
        if self._block_needs:
            self._cache_blocks(i)
        if self.n_unmapped_genes is None:
            # Every chunk sends the same genes, so the first reply's report holds for all.
            self.n_unmapped_genes = chunk.n_unmapped_genes
            self.unmapped_genes = chunk.unmapped_genes
            if self.cache is not None and self._meta_key is not None:
                record = {
                    "n_unmapped_genes": chunk.n_unmapped_genes,
                    "unmapped_genes": chunk.unmapped_genes,
                }
                self.cache.put_meta(self._meta_key, record)

    def _place(self, i: int, k: int, array: np.ndarray) -> None:
        start, stop = self.ranges[i]
        if k in self._handed_out:
            raise ProtocolError(f"chunk {i}: layer {k} arrived after it was complete")
        out = self._output(k, array.shape[1])
        if array.shape[1] != out.shape[1]:
            raise ProtocolError(
                f"chunk {i}, layer {k}: dim {array.shape[1]} differs from earlier chunks "
                f"({out.shape[1]})"
            )
        have = self._have.setdefault(k, set())
        if i in have:
            raise ProtocolError(f"chunk {i}: layer {k} arrived twice")
        out[start:stop] = array
        have.add(i)

    def _output(self, k: int, dim: int) -> np.ndarray:
        """Layer ``k``'s result array (all cells), allocated when its first rows come."""
        out = self._out.get(k)
        if out is None:
            out = self._out[k] = np.empty((self.n_cells, dim), dtype=np.float32)
        return out

    # -- results -------------------------------------------------------------------------------

    def _complete(self, k: int) -> bool:
        return len(self._have.get(k, ())) == self.n_chunks

    def take_complete(self) -> list[tuple[int, np.ndarray]]:
        """Layers whose every chunk is in and that were not handed out yet, in layer order.

        The job lets go of each array it hands out, so that a caller processing one layer
        at a time need not keep them all.
        """
        if self.wanted is None:
            return []
        ready = [k for k in self.wanted if k not in self._handed_out and self._complete(k)]
        self._handed_out.update(ready)
        return [(k, self._out.pop(k)) for k in ready]

    def missing_chunks(self) -> list[int]:
        if self.wanted is None:
            return list(range(self.n_chunks))
        return [i for i in range(self.n_chunks) if self.missing(i)]

    def result(self) -> dict[int, np.ndarray]:
        """Every layer with all cells in input order; raises if a chunk is missing."""
        missing = self.missing_chunks()
        if missing:
            raise RuntimeError(f"chunks {missing} have no reply yet")
        return dict(sorted(self._out.items()))


def extra_specs(
    extra_outputs: Sequence[str | Mapping[str, Any]] | None, layers: Any, pooling: str
) -> list[tuple[str, Any]]:
    """``(pooling, layers)`` of each extra output: a pooling name, or ``{"pooling", "layers"}``
    (layers default to the call's). Each pooling once, and not the call's own."""
    if extra_outputs is None:
        return []
    if isinstance(extra_outputs, str | Mapping) or not isinstance(extra_outputs, Sequence):
        raise TypeError(
            "extra_outputs: expected a list of pooling names or {'pooling': ..., 'layers': ...}, "
            f"got {type(extra_outputs).__name__}"
        )
    specs: list[tuple[str, Any]] = []
    seen = {pooling}
    for n, spec in enumerate(extra_outputs):
        if isinstance(spec, str):
            spec = {"pooling": spec}
        if not isinstance(spec, Mapping):
            raise TypeError(f"extra_outputs[{n}]: expected a pooling name or a dict, got {spec!r}")
        unknown = sorted(set(spec) - {"pooling", "layers"})
        if unknown:
            raise ValueError(f"extra_outputs[{n}]: unknown keys {unknown} (pooling, layers)")
        name = spec.get("pooling")
        if not isinstance(name, str) or not name:
            raise ValueError(f"extra_outputs[{n}].pooling: expected a pooling name, got {name!r}")
        if name in seen:
            raise ValueError(
                f"extra_outputs[{n}]: pooling {name!r} is asked for already; ask for each "
                "pooling once, with all its layers"
            )
        seen.add(name)
        specs.append((name, spec.get("layers", layers)))
    return specs
