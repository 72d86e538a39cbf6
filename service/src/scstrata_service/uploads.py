"""Cells from a request: JSON CSR lists, a ``cells_npz`` archive or an ``.h5ad`` file.

Uploads are data, never file references, and no library touches their arrays before
:func:`checked_csr` has: scipy's sparse routines trust their indices, and an index past the
last column (or 2e9, or -5) reads memory outside the arrays or crashes the worker. Each source
states its size (cells, genes, stored values) from headers or metadata first, so that limits
are checked before anything is materialised (admission.py).
"""

from __future__ import annotations

import binascii
import io
import math
from collections.abc import Sequence
from typing import Any, Protocol

import h5py
import numpy as np
import pybase64  # SIMD base64: ~30x the stdlib's speed on large payloads
import scipy.sparse as sp

from scstrata_service.contract import MAX_LISTED, InputError

# Above this no expression value is a count or a normalised value; past it float32 sums and
# the families' normalisation overflow to inf and the embeddings come back NaN.
MAX_VALUE = 1e9

_FLOATS = (np.float32, np.float64)
_INTS = (np.int32, np.int64)


class CellsSource(Protocol):
    """One request item's cells, sized before they are read."""

    field: str  # the request field the cells came in, for messages
    shape: tuple[int, int]  # (cells, genes) as declared
    nnz: int  # stored values as declared: the expressed genes summed over cells

    def read(self) -> tuple[sp.csr_matrix, list[str] | None]:
        """The checked matrix, and the gene names when the upload carries them."""
        ...


def checked_csr(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    shape: tuple[int, int],
    *,
    field: str,
    by_column: bool = False,
) -> sp.csr_matrix:
    """The one check of every sparse upload, then the CSR matrix (cells x genes).

    Dtypes (float data, integer indices), the index range, a monotone ``indptr`` that starts
    at 0 and ends at ``len(data)``, and finite values in ``0..MAX_VALUE``; messages name
    ``field``. ``by_column``: the arrays are CSC (an ``.h5ad`` may store X so).
    """
    n_rows, n_cols = shape
    n_major, n_minor = (n_cols, n_rows) if by_column else (n_rows, n_cols)
    check_shape(shape, field)
    for name, array, kinds in (
        ("data", data, "fiu"),
        ("indices", indices, "iu"),
        ("indptr", indptr, "iu"),
    ):
        if array.dtype.kind not in kinds or array.dtype.itemsize > 8:
            wanted = "numbers" if kinds == "fiu" else "integers"
            raise InputError(f"{field}.{name}: dtype {array.dtype} is not accepted; send {wanted}")
        if array.ndim != 1:
            raise InputError(f"{field}.{name}: expected a 1-D array, got shape {list(array.shape)}")
    if len(indptr) != n_major + 1:
        raise InputError(
            f"{field}.indptr: has {len(indptr)} entries; shape {[n_rows, n_cols]} needs "
            f"{n_major + 1}"
        )
    if len(indices) != len(data):
        raise InputError(
            f"{field}.indices: {len(indices)} entries but {field}.data has {len(data)}"
        )
    if int(indptr[0]) != 0 or int(indptr[-1]) != len(data) or np.any(indptr[1:] < indptr[:-1]):
        raise InputError(
            f"{field}.indptr: must start at 0, never decrease, and end at len({field}.data) "
            f"= {len(data)}"
        )
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n_minor):
        raise InputError(
            f"{field}.indices: {'row' if by_column else 'column'} indices must lie in "
            f"0..{n_minor - 1}"
        )
    values = data.astype(np.float64, copy=False)
    _check_values(values, indptr, field, by_column)
    index_type = np.int32 if max(len(data), n_minor) < 2**31 else np.int64
    arrays = (values, indices.astype(index_type, copy=False), indptr.astype(index_type, copy=False))
    if by_column:
        matrix = sp.csc_matrix(arrays, shape=(n_rows, n_cols)).tocsr()
    else:
        matrix = sp.csr_matrix(arrays, shape=(n_rows, n_cols))
    if not matrix.has_canonical_format:
        matrix.sum_duplicates()  # repeated (row, column) entries add up, as in scipy
    return matrix


def check_shape(shape: tuple[int, int], field: str) -> None:
    n_rows, n_cols = shape
    if n_rows < 1 or n_cols < 1:
        raise InputError(
            f"{field}.shape: {[n_rows, n_cols]} is empty; send at least one cell and gene"
        )


def _check_values(data: np.ndarray, indptr: np.ndarray, field: str, by_column: bool) -> None:
    """Finite and in 0..MAX_VALUE, or an InputError naming the cells (rows)."""
    if not np.all(np.isfinite(data)):
        raise InputError(f"{field}.data: contains NaN or infinity; send finite expression values")
    for bad, what in (
        (data < 0, "negative values"),
        (data > MAX_VALUE, f"values above {MAX_VALUE:g}"),
    ):
        if not np.any(bad):
            continue
        where = ""
        if not by_column:
            rows = np.unique(np.searchsorted(indptr, np.flatnonzero(bad), side="right") - 1)
            where = f" in rows {rows[:MAX_LISTED].tolist()}"
        raise InputError(
            f"{field}.data: {what}{where}; send expression values (counts, or normalised "
            f"values) in 0..{MAX_VALUE:g}"
        )


def _as_int_array(values: Sequence[int], field: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.int64)
    except OverflowError:
        raise InputError(f"{field}: a value does not fit 64 bits; send indices in range") from None


class JsonCells:
    """``cells``: JSON lists ``data``, ``indices``, ``indptr`` and ``shape`` (parsed already)."""

    field = "cells"

    def __init__(
        self, data: list[float], indices: list[int], indptr: list[int], shape: tuple[int, int]
    ):
        self._lists = data, indices, indptr
        self.shape = shape
        self.nnz = len(data)

    def read(self) -> tuple[sp.csr_matrix, None]:
        data, indices, indptr = self._lists
        arrays = (
            np.asarray(data, dtype=np.float64),
            _as_int_array(indices, "cells.indices"),
            _as_int_array(indptr, "cells.indptr"),
        )
        return checked_csr(*arrays, self.shape, field=self.field), None


def b64decode(encoded: str, field: str, howto: str) -> bytes:
    try:
        return pybase64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{field}: not valid base64; {howto}") from None


NPZ_MEMBERS = ("data", "indices", "indptr", "shape")
_NPZ_DTYPES = {"data": _FLOATS, "indices": _INTS, "indptr": _INTS}
_NPZ_HOWTO = (
    "cells_npz must be the base64 of np.savez(buffer, data=<float32 or float64>, "
    "indices=<int32 or int64>, indptr=<int32 or int64>, shape=[cells, genes]) "
    "of the cells x genes CSR matrix"
)


class SizeExceeded(InputError):
    """An upload larger than a limit (413 rather than 400)."""


class NpzCells:
    """``cells_npz``: an ``.npz`` of the CSR arrays, read without pickle.

    The zip directory and each member's ``.npy`` header are read first: what the members
    unpack to is bounded by ``max_bytes`` and every array's declared size by its member's, so
    a small compressed upload cannot expand past the limit.
    """

    field = "cells_npz"

    def __init__(self, encoded: str, max_bytes: int):
        raw = b64decode(encoded, self.field, _NPZ_HOWTO)
        try:
            archive = np.load(io.BytesIO(raw), allow_pickle=False)
        except Exception as err:  # zipfile, zlib and numpy raise many types for bad bytes
            raise InputError(f"cells_npz: not a readable .npz file ({err}); {_NPZ_HOWTO}") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputError(f"cells_npz: holds a single .npy array, not an .npz; {_NPZ_HOWTO}")
        self._archive = archive
        missing = [m for m in NPZ_MEMBERS if m not in archive.files]
        if missing:
            raise InputError(
                f"cells_npz: missing member(s) {missing} (it has {archive.files}); {_NPZ_HOWTO}"
            )
        unpacked = sum(info.file_size for info in archive.zip.infolist())
        if unpacked > max_bytes:
            raise SizeExceeded(
                f"cells_npz: its members unpack to {unpacked} bytes, over this server's limit "
                f"of {max_bytes} bytes; send fewer cells per request (the client's chunk_size) "
                "or raise SCSTRATA_MAX_BODY_MB"
            )
        self._headers = {name: self._header(name) for name in NPZ_MEMBERS}
        shape_dtype, shape_shape = self._headers["shape"]
        if shape_dtype.kind not in "iu" or shape_shape != (2,):
            raise InputError(
                f"cells_npz.shape: expected 2 integers (cells, genes), got an array of "
                f"dtype {shape_dtype} and shape {list(shape_shape)}"
            )
        shape = self._member("shape")
        self.shape = (int(shape[0]), int(shape[1]))
        self.nnz = math.prod(self._headers["data"][1])

    def _header(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """A member's dtype and shape from its .npy header; its size checked against the zip's."""
        try:
            with self._archive.zip.open(f"{name}.npy") as member:
                version = np.lib.format.read_magic(member)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read(member)
        except Exception as err:  # corrupt headers raise many types
            raise InputError(f"cells_npz.{name}: unreadable ({err}); {_NPZ_HOWTO}") from None
        declared = math.prod(shape) * dtype.itemsize
        if declared > self._archive.zip.getinfo(f"{name}.npy").file_size:
            raise InputError(f"cells_npz.{name}: its header declares more bytes than it holds")
        return dtype, shape

    def _member(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self._archive[name])
        except Exception as err:  # object arrays (refused without pickle), corrupt members
            raise InputError(f"cells_npz.{name}: unreadable ({err}); {_NPZ_HOWTO}") from None

    def read(self) -> tuple[sp.csr_matrix, None]:
        for name, dtypes in _NPZ_DTYPES.items():
            dtype, shape = self._headers[name]
            if dtype not in [np.dtype(d) for d in dtypes]:
                raise InputError(
                    f"cells_npz.{name}: dtype {dtype} is not accepted; send "
                    f"{' or '.join(np.dtype(d).name for d in dtypes)}"
                )
            if len(shape) != 1:
                raise InputError(f"cells_npz.{name}: expected a 1-D array, got shape {list(shape)}")
        with self._archive:
            arrays = [self._member(name) for name in _NPZ_DTYPES]
        return checked_csr(*arrays, self.shape, field=self.field), None


_SPARSE_ENCODINGS = {"csr_matrix": False, "csc_matrix": True}  # encoding-type -> by column


class H5adCells:
    """``h5ad``: an AnnData file. Only ``X`` (or one layer) and ``var`` are read.

    Every link and dataset of the file is checked before any is read: HDF5 can store a
    dataset's bytes in another file (external storage), point a link into another file, or
    map a dataset onto others (virtual datasets). Here all of them could read the server's
    own files, so only hard links to datasets stored inside the upload are accepted, and the
    declared size of all datasets together is bounded by ``max_bytes``.
    """

    field = "h5ad"

    def __init__(self, encoded: str, layer: str | None, gene_column: str | None, max_bytes: int):
        raw = b64decode(encoded, self.field, "encode the file's bytes with base64")
        try:
            self._file = h5py.File(io.BytesIO(raw), "r")
        except Exception as err:  # h5py raises many types for a corrupt file
            raise InputError(f"h5ad: could not read the upload as an .h5ad file ({err})") from None
        declared = _check_inline(self._file)
        if declared > max_bytes:
            raise SizeExceeded(
                f"h5ad: its datasets declare {declared} bytes, over this server's limit of "
                f"{max_bytes} bytes; send fewer cells per request or raise SCSTRATA_MAX_BODY_MB"
            )
        self._layer, self._gene_column = layer, gene_column
        self._matrix = self._find_matrix()
        if isinstance(self._matrix, h5py.Dataset):
            if self._matrix.ndim != 2:
                raise InputError(f"h5ad: {self._where} is not a 2-D matrix")
            self.shape = tuple(int(n) for n in self._matrix.shape)
            self.nnz = math.prod(self.shape)
        else:
            shape = self._matrix.attrs.get("shape")
            if shape is None or len(shape) != 2:
                raise InputError(f"h5ad: {self._where} has no 2-D shape attribute")
            self.shape = (int(shape[0]), int(shape[1]))
            data = self._matrix.get("data")
            self.nnz = (
                int(data.shape[0]) if isinstance(data, h5py.Dataset) and data.ndim == 1 else 0
            )

    @property
    def _where(self) -> str:
        return "X" if self._layer is None else f"layers/{self._layer}"

    def _find_matrix(self) -> h5py.Dataset | h5py.Group:
        if self._layer is not None:
            layers = self._file.get("layers")
            names = list(layers) if isinstance(layers, h5py.Group) else []
            if self._layer not in names:
                raise InputError(f"h5ad_layer: no layer {self._layer!r}; the file has {names}")
            matrix = layers[self._layer]
        else:
            matrix = self._file.get("X")
            if matrix is None:
                raise InputError("h5ad: the file has no X; name a layer with h5ad_layer")
        if isinstance(matrix, h5py.Group) and _encoding(matrix) not in _SPARSE_ENCODINGS:
            raise InputError(
                f"h5ad: {self._where} is stored as {_encoding(matrix)!r}; send a dense, "
                "csr_matrix or csc_matrix matrix"
            )
        return matrix

    def read(self) -> tuple[sp.csr_matrix, list[str]]:
        with self._file:
            genes = self._genes()
            if isinstance(self._matrix, h5py.Dataset):
                dense = self._matrix[()]
                if dense.dtype.kind not in "fiu":
                    raise InputError(f"h5ad: {self._where} holds {dense.dtype}, not numbers")
                counts = sp.csr_matrix(dense.astype(np.float64, copy=False))
                # the same checks as a sparse upload: values; the arrays are scipy's own
                matrix = checked_csr(
                    counts.data, counts.indices, counts.indptr, self.shape, field="h5ad.X"
                )
            else:
                arrays = []
                for name in ("data", "indices", "indptr"):
                    member = self._matrix.get(name)
                    if not isinstance(member, h5py.Dataset):
                        raise InputError(f"h5ad: {self._where} has no {name} array")
                    arrays.append(np.asarray(member[()]))
                by_column = _SPARSE_ENCODINGS[_encoding(self._matrix)]
                field = f"h5ad.{self._where}"
                matrix = checked_csr(*arrays, self.shape, field=field, by_column=by_column)
        return matrix, genes

    def _genes(self) -> list[str]:
        import anndata  # only here: it is slow to import

        var = self._file.get("var")
        if not isinstance(var, h5py.Group):
            raise InputError("h5ad: the file has no var (gene) table")
        try:
            frame = anndata.io.read_elem(var)
        except Exception as err:  # anndata raises many types for a malformed table
            raise InputError(f"h5ad: could not read its var table ({err})") from None
        if self._gene_column is None:
            return frame.index.astype(str).tolist()
        if self._gene_column not in frame.columns:
            raise InputError(
                f"gene_column: no var column {self._gene_column!r}; "
                f"the file has {list(frame.columns)}"
            )
        return frame[self._gene_column].astype(str).tolist()


def _encoding(group: h5py.Group) -> str:
    value: Any = group.attrs.get("encoding-type", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_inline(root: h5py.File) -> int:
    """Refuse any link or dataset that could reach outside the upload; return the datasets'
    declared bytes. Runs on metadata alone: no dataset is read."""
    declared = 0
    groups = [root]
    seen: set[int] = set()
    while groups:
        group = groups.pop()
        for name in group:
            link = group.get(name, getlink=True)
            path = f"{group.name.rstrip('/')}/{name}"
            if not isinstance(link, h5py.HardLink):
                kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
                raise InputError(
                    f"h5ad: {path} is {kind}; uploads must hold their data, not refer to other "
                    "objects or files"
                )
            obj = group[name]
            address = h5py.h5o.get_info(obj.id).addr
            if address in seen:
                continue
            seen.add(address)
            if isinstance(obj, h5py.Group):
                groups.append(obj)
            elif isinstance(obj, h5py.Dataset):
                _check_dataset(obj, path)
                declared += obj.size * obj.dtype.itemsize
            else:
                raise InputError(f"h5ad: {path} is a {type(obj).__name__}, not a group or dataset")
    return declared


def _check_dataset(dataset: h5py.Dataset, path: str) -> None:
    plist = dataset.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise InputError(f"h5ad: {path} is a virtual dataset; send a file that holds its data")
    if plist.get_external_count() > 0:
        raise InputError(
            f"h5ad: {path} keeps its data in an external file; send a file that holds its data"
        )
    if layout not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED):
        raise InputError(f"h5ad: {path} has an unsupported storage layout")
