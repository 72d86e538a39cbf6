"""The zarr store a streamed run writes: one array per (model, pooling, layer), rows in input
order, each finished chunk written once and then marked done.

Layout (zarr format 3)::

    layers.zarr/                       attrs["scstrata"]: the input (cells, genes, data digest)
      <model>/<pooling>/               attrs["scstrata"]: the job (StoreSpec)
        layer_<k>                      float32 (n_cells, dim), zarr chunks of chunk_size rows
        done                           uint8 (n_chunks, 32): row i is chunk i's data digest
                                       once chunk i is written; zeros until then

A job chunk is exactly one zarr chunk of every layer array, so chunks written concurrently
(threads, or Dask workers on a shared file system) never touch the same file. ``write_chunk``
writes the layers first and marks the chunk done last; zarr's local store writes each file to
a temporary name and renames it, so a run killed anywhere leaves every chunk either marked
done with all its layers in place, or not marked and rewritten by the next run.

A store is opened for one job (``StoreSpec``): the model card's digest, the options, the
layers, the pooling, the chunk size and the input must match what the store was created with,
or ``open_store`` raises ``StoreMismatch`` instead of mixing results. A done chunk also records
the digest of its cells; a resumed run checks it against the input before writing anything
(``verify_chunk``), which catches inputs that kept their shape but changed their values.

Create a store in one process (``open_store``), then open it in others (workers) with the same
spec; ``read_store`` opens a finished or partial store read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic
import zarr

from ._version import __version__
from .exceptions import ScstrataError

if TYPE_CHECKING:
    import dask.array

FORMAT_VERSION = 1
ATTRS_KEY = "scstrata"
DIGEST_BYTES = 32  # sha256
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


class StoreMismatch(ScstrataError, ValueError):
    """The store at a path was written for another job (model, options, layers or input)."""


class InputSpec(pydantic.BaseModel):
    """What the rows of a store are: the same cells in the same order for every job in it."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    n_cells: int = pydantic.Field(ge=1)
    n_genes: int = pydantic.Field(ge=1)
    data_digest: str
    """Digest of the gene names, the shape and every row's non-zero count (cheap to take
    from a backed file); each done chunk's own digest covers its values."""


class StoreSpec(pydantic.BaseModel):
    """Everything one job's arrays depend on; a store is resumed only for an equal spec."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    model: str
    pooling: str
    layers: list[int] = pydantic.Field(min_length=1)
    dim: int = pydantic.Field(ge=1)
    chunk_size: int = pydantic.Field(ge=1)
    card_digest: str
    """Digest of the whole model card (``checkpoint_digest`` names the weights)."""
    checkpoint_digest: str | None = None
    options: dict[str, Any] = pydantic.Field(default_factory=dict)
    input: InputSpec

    @property
    def n_chunks(self) -> int:
        return -(-self.input.n_cells // self.chunk_size)

    def rows(self, index: int) -> tuple[int, int]:
        """The half-open row range of chunk ``index``."""
        if not 0 <= index < self.n_chunks:
            raise IndexError(f"chunk {index}: the store has chunks 0..{self.n_chunks - 1}")
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.input.n_cells)

    def group_path(self) -> str:
        return job_group(self.model, self.pooling)


def job_group(model: str, pooling: str) -> str:
    """The group of a (model, pooling) job: ``<model>/<pooling>``, with characters that are
    not safe in a path (such as the ``/`` of ``tahoe-x1/70m``) replaced by ``_``."""
    return f"{_UNSAFE.sub('_', model)}/{_UNSAFE.sub('_', pooling)}"


def layer_name(layer: int) -> str:
    return f"layer_{int(layer)}"


def _spec_json(spec: pydantic.BaseModel) -> dict[str, Any]:
    # Options go through JSON so that a tuple and a list, or 1 and 1.0 stored, compare alike.
    return json.loads(spec.model_dump_json())


def _differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    names = sorted(set(stored) | set(wanted))
    return [
        f"{name}: store has {stored.get(name)!r}, this run has {wanted.get(name)!r}"
        for name in names
        if stored.get(name) != wanted.get(name)
    ]


class EmbeddingStore:
    """A handle on one job's arrays in a store (from :func:`open_store` or :func:`read_store`).

    ``path``, ``spec``, ``arrays`` (layer -> array path in the store), ``done_chunks()``,
    ``missing_chunks()``, ``complete``; ``layer(k)`` is the zarr array, ``to_dask(k)`` a dask
    array over it, ``to_numpy(k)`` loads it. Writing: ``write_chunk``, ``verify_chunk``.
    """

    def __init__(self, path: Path, root: zarr.Group, spec: StoreSpec, writable: bool):
        self.path = path
        self.spec = spec
        self._root = root
        self._group = root[spec.group_path()]
        self._writable = writable
        self._done = self._group["done"]
        # Opened once: opening an array reads its metadata (~10 ms a time on a busy host).
        self._arrays = {k: self._group[layer_name(k)] for k in spec.layers}

    def __repr__(self) -> str:
        done = len(self.done_chunks())
        return (
            f"EmbeddingStore({str(self.path)!r}, model={self.spec.model!r}, "
            f"pooling={self.spec.pooling!r}, layers={self.spec.layers}, "
            f"chunks done {done}/{self.spec.n_chunks})"
        )

    # -- reading ---------------------------------------------------------------------------

    @property
    def arrays(self) -> dict[int, str]:
        """Layer index -> the array's path inside the store."""
        return {k: f"{self.spec.group_path()}/{layer_name(k)}" for k in self.spec.layers}

    @property
    def layers(self) -> list[int]:
        return list(self.spec.layers)

    @property
    def n_cells(self) -> int:
        return self.spec.input.n_cells

    def _marks(self) -> np.ndarray:
        return np.asarray(self._done[:])

    def done_chunks(self) -> set[int]:
        """The chunks whose every layer is written (read from the store, not remembered)."""
        return {int(i) for i in np.flatnonzero(self._marks().any(axis=1))}

    def missing_chunks(self) -> list[int]:
        done = self.done_chunks()
        return [i for i in range(self.spec.n_chunks) if i not in done]

    @property
    def complete(self) -> bool:
        return not self.missing_chunks()

    def chunk_digest(self, index: int) -> str | None:
        """The data digest chunk ``index`` was written from, or None if it is not done."""
        self.spec.rows(index)  # range check
        mark = np.asarray(self._done[index])
        return bytes(mark).hex() if mark.any() else None

    def layer(self, k: int) -> zarr.Array:
        if k not in self._arrays:
            raise KeyError(f"layer {k}: the store holds layers {self.spec.layers}")
        return self._arrays[k]

    def to_numpy(self, k: int) -> np.ndarray:
        self._require_complete()
        return np.asarray(self.layer(k)[:])

    def to_dask(self, k: int) -> dask.array.Array:
        import dask.array as da

        self._require_complete()
        return da.from_zarr(self.layer(k))

    def _require_complete(self) -> None:
        missing = self.missing_chunks()
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise RuntimeError(
                f"{self.path}: {len(missing)} of {self.spec.n_chunks} chunks are not written "
                f"yet ({shown}); run the same embed again to finish them"
            )

    # -- writing ---------------------------------------------------------------------------

    def verify_chunk(self, index: int, data_digest: str) -> None:
        """Raise ``StoreMismatch`` if done chunk ``index`` was written from other cells."""
        stored = self.chunk_digest(index)
        if stored is not None and stored != data_digest:
            start, stop = self.spec.rows(index)
            raise StoreMismatch(
                f"{self.path}: rows {start}:{stop} were embedded from other cells than the "
                "input's (same shape, other values); write to another path or delete the store"
            )

    def write_chunk(self, index: int, layers: Mapping[int, np.ndarray], data_digest: str) -> None:
        """Write every layer of chunk ``index``, then mark it done with ``data_digest``.

        Safe to call from several threads or processes for different chunks at once.

        ``data_digest`` is the digest of the chunk's cells (hex sha256). Raises
        ``ValueError`` for a missing or extra layer or a wrong shape; writing a chunk that is
        already done raises ``StoreMismatch`` (a chunk is written once).
        """
        if not self._writable:
            raise RuntimeError(f"{self.path}: opened read-only (read_store)")
        start, stop = self.spec.rows(index)
        if sorted(layers) != sorted(self.spec.layers):
            raise ValueError(
                f"chunk {index}: got layers {sorted(layers)}, the store holds {self.spec.layers}"
            )
        mark = np.frombuffer(bytes.fromhex(data_digest), dtype=np.uint8)
        if mark.shape != (DIGEST_BYTES,) or not mark.any():
            raise ValueError(f"data_digest: expected a hex sha256, got {data_digest!r}")
        arrays = {}
        for k, array in layers.items():
            array = np.ascontiguousarray(array, dtype=np.float32)
            if array.shape != (stop - start, self.spec.dim):
                raise ValueError(
                    f"chunk {index}, layer {k}: expected shape {(stop - start, self.spec.dim)}, "
                    f"got {array.shape}"
                )
            arrays[k] = array
        if self.chunk_digest(index) is not None:
            raise StoreMismatch(f"{self.path}: chunk {index} is already written")
        for k, array in arrays.items():
            self._arrays[k][start:stop] = array
        self._done[index] = mark  # last: the chunk counts as written only from here

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def _create_or_open(cls, path: str | os.PathLike[str], spec: StoreSpec) -> EmbeddingStore:
        path = Path(path)
        if not (path / "zarr.json").is_file() and path.exists() and any(path.iterdir()):
            raise StoreMismatch(f"{path}: exists and is not a zarr store; choose another path")
        root = zarr.open_group(path, mode="a", zarr_format=3)
        _check_or_set(root, spec.input, path, "the input")
        group_path = spec.group_path()
        if group_path in root and ATTRS_KEY not in root[group_path].attrs:
            # Created by a run killed before it wrote the job's spec (the last step): no chunk
            # of it can be marked done, so start it again.
            del root[group_path]
        if group_path in root:
            what = f"{spec.model!r} with pooling {spec.pooling!r}"
            _check_or_set(root[group_path], spec, path, what)
            return cls(path, root, spec, writable=True)
        group = root.require_group(group_path)
        for k in spec.layers:
            group.create_array(
                layer_name(k),
                shape=(spec.input.n_cells, spec.dim),
                chunks=(spec.chunk_size, spec.dim),
                dtype="float32",
                fill_value=np.nan,  # unwritten rows read as NaN, never as zeros
            )
        group.create_array(
            "done",
            shape=(spec.n_chunks, DIGEST_BYTES),
            chunks=(1, DIGEST_BYTES),
            dtype="uint8",
            fill_value=0,
            compressors=None,
        )
        # The spec last: a store whose arrays are not all there yet has no job to resume.
        _check_or_set(group, spec, path, "")
        return cls(path, root, spec, writable=True)


def _check_or_set(node: zarr.Group, spec: pydantic.BaseModel, path: Path, what: str) -> None:
    """Record ``spec`` on a new node; on an existing one, refuse any difference."""
    stored = node.attrs.get(ATTRS_KEY)
    wanted = _spec_json(spec)
    if stored is None:
        node.attrs[ATTRS_KEY] = {**wanted, "format": FORMAT_VERSION, "client_version": __version__}
        return
    stored = dict(stored)
    if stored.get("format") != FORMAT_VERSION:
        raise StoreMismatch(
            f"{path}: store format {stored.get('format')!r}, this client writes {FORMAT_VERSION}"
        )
    stored = {k: v for k, v in stored.items() if k in wanted}
    diffs = _differences(stored, wanted)
    if diffs:
        raise StoreMismatch(
            f"{path}: written for another run of {what}, refusing to mix results ("
            + "; ".join(diffs)
            + "); write to another path or delete the store"
        )


def open_store(path: str | os.PathLike[str], spec: StoreSpec) -> EmbeddingStore:
    """Create the store for ``spec`` at ``path``, or open it to resume the same job.

    Raises ``StoreMismatch`` if the store was written for another job: another model card,
    options, layers, pooling, chunk size or input.
    """
    return EmbeddingStore._create_or_open(path, spec)


def read_store(
    path: str | os.PathLike[str], model: str | None = None, pooling: str | None = None
) -> EmbeddingStore:
    """Open an existing store read-only; ``model`` and ``pooling`` pick a job when it holds
    several (with one job they may be left out)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"{path}: no zarr store here")
    root = zarr.open_group(path, mode="r", zarr_format=3)
    jobs = []
    for _, model_group in root.groups():
        for _, group in model_group.groups():
            attrs = group.attrs.get(ATTRS_KEY)
            if attrs is None:
                continue
            if model is not None and attrs.get("model") != model:
                continue
            if pooling is not None and attrs.get("pooling") != pooling:
                continue
            jobs.append(attrs)
    if len(jobs) != 1:
        found = "no job" if not jobs else f"{len(jobs)} jobs"
        raise ValueError(
            f"{path}: {found} for model={model!r}, pooling={pooling!r}; name model and pooling"
        )
    fields = set(StoreSpec.model_fields)
    spec = StoreSpec.model_validate({k: v for k, v in jobs[0].items() if k in fields})
    return EmbeddingStore(path, root, spec, writable=False)


def digest_structure(genes: list[str], n_cells: int, indptr: np.ndarray | None) -> str:
    """The input's ``data_digest`` (``InputSpec``): gene names, shape, row non-zero counts.

    ``indptr`` is the CSR row pointer (None for a dense input, whose shape says it all).
    """
    h = hashlib.sha256()
    h.update(json.dumps([list(genes), int(n_cells)]).encode())
    if indptr is not None:
        h.update(np.ascontiguousarray(indptr, dtype=np.int64).tobytes())
    return h.hexdigest()
