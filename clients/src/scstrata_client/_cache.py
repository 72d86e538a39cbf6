"""An on-disk cache of results: one ``.npz`` per block of rows (and model, pooling), holding
every layer fetched for those rows and a checksum of them.

A block is ``block_rows`` consecutive cells (256), counted from the input's first cell,
whatever the ``chunk_size`` of the run: a run with another chunk size reads the same entries (a
chunk is sent only for the layers some block it overlaps lacks), and an entry is written once
every chunk that overlaps its block has come back.

A key digests everything the embedding depends on: the block's cells (their canonical CSR
arrays) and gene names, the model's name and card (whose ``checkpoint_digest`` names the
weights; the whole card is digested, so that any field a service adds to it, such as a code
version, also separates results), the options and the pooling. The layers are not in the key:
an entry holds the layers fetched so far, and a later call that needs more layers of the block
asks for those alone and rewrites the entry with all of them. Keying blocks rather than whole
inputs is what lets an interrupted run resume: every block whose chunks came back before the
interruption is on disk. (A streamed run, ``embed(out=...)``, keeps its results in its zarr
store instead, which it resumes from, and does not use this cache.)

Each entry stores the sha256 of its arrays; an entry whose bytes no longer match (a flipped
bit on disk, a truncated copy) is dropped with a warning and fetched again, never returned.
Files are written to a temporary name and renamed into place, so that a crash or a
concurrent reader never sees half a file. A read refreshes the file's modification time;
when the cache outgrows its limit, the least recently used files go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger("scstrata_client")

CACHE_DIR_ENV = "SCSTRATA_CACHE_DIR"
DEFAULT_MAX_BYTES = 20 * 2**30
# Rows per entry: the default chunk_size, so that a default run writes one file per chunk (and
# entries of the former one-file-per-chunk layout, at that chunk size, are still found).
DEFAULT_BLOCK_ROWS = 256
# Evicting down to a little below the limit means the next few writes need no new scan.
_EVICT_TO = 0.9
# A temporary file this old was left by a process killed mid-write.
_STALE_TMP_S = 3600.0
_VERSION = "v2"  # v1: one .npy per (chunk, layer), no checksum


def default_cache_dir() -> Path:
    """``$SCSTRATA_CACHE_DIR``, else ``$XDG_CACHE_HOME/scstrata``, else ``~/.cache/scstrata``."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "scstrata"


def digest_genes(genes: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(genes)).encode()).hexdigest()


def digest_options(options: Mapping[str, Any]) -> str:
    text = json.dumps(dict(options), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def digest_chunk(cells: sp.csr_matrix, genes_digest: str) -> str:
    """The data digest of one chunk: its canonical CSR arrays and its gene list's digest.

    ``cells`` must be canonical (``_protocol.canonical_csr``); index arrays are hashed as
    int64 so that the digest does not depend on SciPy's choice of index dtype.
    """
    h = hashlib.sha256()
    h.update(genes_digest.encode())
    h.update(np.asarray(cells.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(cells.indptr, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(cells.indices, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(cells.data, dtype=np.float32).tobytes())
    return h.hexdigest()


def digest_card(card: Mapping[str, Any]) -> str:
    """A model card's digest (its ``checkpoint_digest`` and every other field)."""
    text = json.dumps(dict(card), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def result_key(
    data_digest: str,
    *,
    model: str,
    card_digest: str,
    options_digest: str,
    pooling: str,
) -> str:
    """The key of one block's entry (every layer of it that was fetched)."""
    parts = [_VERSION, data_digest, model, card_digest, options_digest, pooling]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def checksum_layers(layers: Mapping[int, np.ndarray]) -> str:
    """sha256 of an entry's layers: each index, shape and float32 bytes, in layer order."""
    h = hashlib.sha256()
    for k in sorted(layers):
        array = np.ascontiguousarray(layers[k], dtype=np.float32)
        h.update(json.dumps([int(k), list(array.shape)]).encode())
        h.update(array.tobytes())
    return h.hexdigest()


_LAYER = "layer_"
_CHECKSUM = "sha256"


class ChunkCache:
    """A directory of cached arrays with a size limit (``max_bytes``), evicting LRU first.

    Safe to share between processes: writes are atomic renames, and a file that vanishes
    (evicted by another process) or cannot be read is a miss.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ):
        if max_bytes < 0:
            raise ValueError(f"cache_max_bytes: must be non-negative, got {max_bytes}")
        if block_rows < 1:
            raise ValueError(f"block_rows: must be at least 1, got {block_rows}")
        self.directory = Path(directory).expanduser()
        self.max_bytes = int(max_bytes)
        self.block_rows = int(block_rows)
        """Rows per entry, counted from an input's first cell (independent of chunk_size)."""
        self._root = self.directory / _VERSION
        self._size: int | None = None  # bytes on disk, scanned lazily, then kept up to date
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ChunkCache({str(self.directory)!r}, max_bytes={self.max_bytes})"

    def _path(self, key: str, suffix: str) -> Path:
        return self._root / key[:2] / f"{key}{suffix}"

    # -- arrays ---------------------------------------------------------------------------

    def get(self, key: str, n_rows: int, dim: int | None = None) -> dict[int, np.ndarray] | None:
        """The layers cached for ``key``, or None.

        An entry that is unreadable, of the wrong shape, or whose bytes do not match its
        checksum is removed and counts as a miss, so that the caller fetches it again.
        """
        path = self._path(key, ".npz")
        try:
            with np.load(path, allow_pickle=False) as archive:
                stored = str(archive[_CHECKSUM])
                layers = {
                    int(name[len(_LAYER) :]): archive[name]
                    for name in archive.files
                    if name.startswith(_LAYER)
                }
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            logger.warning("cache: dropping unreadable %s (%s); fetching it again", path, exc)
            self._remove(path)
            return None
        bad = [
            k
            for k, array in layers.items()
            if array.ndim != 2
            or array.shape[0] != n_rows
            or (dim is not None and array.shape[1] != dim)
            or array.dtype != np.float32
        ]
        if bad or not layers:
            logger.warning("cache: dropping %s of unexpected shape; fetching it again", path)
            self._remove(path)
            return None
        if checksum_layers(layers) != stored:
            logger.warning("cache: %s does not match its checksum; fetching it again", path)
            self._remove(path)
            return None
        self._touch(path)
        return dict(sorted(layers.items()))

    def put(self, key: str, layers: Mapping[int, np.ndarray]) -> None:
        """Store every layer of one block (replacing what the entry held)."""
        arrays = {
            f"{_LAYER}{int(k)}": np.ascontiguousarray(a, dtype=np.float32)
            for k, a in layers.items()
        }
        arrays[_CHECKSUM] = np.array(checksum_layers(layers))
        self._write(self._path(key, ".npz"), lambda f: np.savez(f, **arrays))

    # -- small JSON records (e.g. the unmapped genes of a gene list) -------------------------

    def get_meta(self, key: str) -> dict[str, Any] | None:
        path = self._path(key, ".json")
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self._remove(path)
            return None
        self._touch(path)
        return record if isinstance(record, dict) else None

    def put_meta(self, key: str, record: Mapping[str, Any]) -> None:
        data = json.dumps(dict(record)).encode()
        self._write(self._path(key, ".json"), lambda f: f.write(data))

    # -- housekeeping ------------------------------------------------------------------------

    def size(self) -> int:
        """Bytes held, from a fresh scan of the directory."""
        return sum(size for _, size, _ in self._scan())

    def clear(self) -> None:
        """Delete every cached file."""
        for _, _, path in self._scan():
            self._remove(path)
        with self._lock:
            self._size = 0

    def _write(self, path: Path, write: Any) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            size = path.stat().st_size
        except OSError as exc:
            # A full disk or a read-only cache must not fail an embedding that succeeded.
            logger.warning("cache: could not write %s (%s)", path, exc)
            return
        with self._lock:
            if self._size is None:
                self._size = self.size()
            else:
                self._size += size
            over = self._size > self.max_bytes
        if over:
            self._evict()

    def _evict(self) -> None:
        with self._lock:
            files = sorted(self._scan())  # oldest access first
            total = sum(size for _, size, _ in files)
            target = int(self.max_bytes * _EVICT_TO)
            for _, size, path in files:
                if total <= target:
                    break
                if self._remove(path):
                    total -= size
            self._size = total
        logger.debug("cache: evicted down to %d bytes (limit %d)", total, self.max_bytes)

    def _scan(self) -> list[tuple[float, int, Path]]:
        found = []
        if not self._root.is_dir():
            return found
        for sub in self._root.iterdir():
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                try:
                    stat = path.stat()
                except OSError:
                    continue
                if path.name.startswith(".tmp-"):
                    if time.time() - stat.st_mtime > _STALE_TMP_S:
                        self._remove(path)
                    continue
                if path.suffix in (".npz", ".json"):
                    found.append((stat.st_mtime, stat.st_size, path))
        return found

    @staticmethod
    def _touch(path: Path) -> None:
        with contextlib.suppress(OSError):
            os.utime(path)

    @staticmethod
    def _remove(path: Path) -> bool:
        try:
            path.unlink()
        except OSError:
            return False
        return True
