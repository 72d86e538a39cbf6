"""The HTTP edge: request items and results (docs/api.md).

Every client mistake is caught here, per request, while BentoML parses the body: a
validator error becomes a 400 for that request alone. Checks that ran later, inside an
adaptive batch, would fail every request merged into it.
"""

from __future__ import annotations

import binascii
import io
from concurrent.futures import Future
from http import HTTPStatus
from typing import Any, Literal

import anndata
import numpy as np
import pybase64  # SIMD base64: ~30x the stdlib's speed on large payloads
import scipy.sparse as sp
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from scstrata_service.contract import MAX_LISTED, InputError, ModelCard, TokenizedCells
from scstrata_service.engine import tokenize_soon
from scstrata_service.layers import LayerError, check_pooling, resolve_layers
from scstrata_service.registry import active
from scstrata_service.settings import SETTINGS


class LimitExceeded(BentoMLException):
    """A configured limit: 413 unless said otherwise. Raised (not a ValueError) from the
    validators so that BentoML answers with this status instead of a generic 400."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class CSRCells(BaseModel):
    """Cells x genes in compressed sparse row form."""

    model_config = ConfigDict(extra="forbid")

    data: list[float]
    indices: list[int]
    indptr: list[int]
    shape: tuple[int, int]

    @staticmethod
    def check_values(data: np.ndarray, indptr: np.ndarray, field: str = "cells") -> None:
        """Finite and non-negative, or an InputError naming the rows."""
        if not np.all(np.isfinite(data)):
            raise InputError(
                f"{field}.data: contains NaN or infinity; send finite expression values"
            )
        if np.any(data < 0):
            rows = np.unique(np.searchsorted(indptr, np.flatnonzero(data < 0), side="right") - 1)
            raise InputError(
                f"{field}.data: negative values in rows {rows[:MAX_LISTED].tolist()}; "
                "counts must be >= 0"
            )

    def to_csr(self) -> sp.csr_matrix:
        return csr_from_arrays(self.data, self.indices, self.indptr, self.shape, field="cells")


def csr_from_arrays(
    data: Any, indices: Any, indptr: Any, shape: tuple[int, int], *, field: str
) -> sp.csr_matrix:
    """Check the CSR arrays of a request (JSON ``cells`` or ``cells_npz``) and build the matrix.

    Messages name ``field`` (``cells`` or ``cells_npz``) and say how to fix the request.
    """
    n_rows, n_cols = (int(n) for n in shape)
    data = np.asarray(data, dtype=np.float64)
    indices = np.asarray(indices, dtype=np.int64)
    indptr = np.asarray(indptr, dtype=np.int64)
    if n_rows < 1 or n_cols < 1:
        raise InputError(
            f"{field}.shape: {[n_rows, n_cols]} is empty; send at least one cell and gene"
        )
    if len(indptr) != n_rows + 1:
        raise InputError(
            f"{field}.indptr: has {len(indptr)} entries; shape {[n_rows, n_cols]} "
            f"needs {n_rows + 1}"
        )
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(data):
        raise InputError(
            f"{field}.indptr: must start at 0, never decrease, and end at len({field}.data)"
        )
    if len(indices) != len(data):
        raise InputError(
            f"{field}.indices: {len(indices)} entries but {field}.data has {len(data)}"
        )
    if len(indices) and (indices.min() < 0 or indices.max() >= n_cols):
        raise InputError(f"{field}.indices: column indices must lie in 0..{n_cols - 1}")
    CSRCells.check_values(data, indptr, field)
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))
    if not matrix.has_canonical_format:
        matrix.sum_duplicates()  # repeated (row, column) entries add up, as in scipy
    return matrix


NPZ_MEMBERS = ("data", "indices", "indptr", "shape")
_NPZ_DTYPES = {
    "data": (np.float32, np.float64),
    "indices": (np.int32, np.int64),
    "indptr": (np.int32, np.int64),
}
_NPZ_HOWTO = (
    "cells_npz must be the base64 of np.savez(buffer, data=<float32 or float64>, "
    "indices=<int32 or int64>, indptr=<int32 or int64>, shape=[cells, genes]) "
    "of the cells x genes CSR matrix"
)


class CellsNpz:
    """The CSR arrays of a ``cells_npz`` upload (docs/api.md), read without pickle.

    ``shape`` is read first, so that a request over the cell or gene limit is refused before
    the arrays are.
    """

    def __init__(self, encoded: str):
        try:
            raw = pybase64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"cells_npz: not valid base64; {_NPZ_HOWTO}") from None
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
        # Members are read from memory: bound what they expand to by the body size limit,
        # as a JSON body holding the same numbers would be.
        unpacked = sum(info.file_size for info in archive.zip.infolist())
        if unpacked > SETTINGS.max_body_bytes:
            raise LimitExceeded(
                f"cells_npz: its members unpack to {unpacked} bytes, over this server's limit "
                f"of {SETTINGS.max_body_bytes} bytes; send fewer cells per request (the "
                "client's chunk_size) or raise SCSTRATA_MAX_BODY_MB"
            )
        shape = self._member("shape")
        if not np.issubdtype(shape.dtype, np.integer) or shape.shape != (2,):
            raise InputError(
                f"cells_npz.shape: expected 2 integers (cells, genes), got an array of "
                f"dtype {shape.dtype} and shape {list(shape.shape)}"
            )
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))

    def _member(self, name: str) -> np.ndarray:
        try:
            array = self._archive[name]
        except Exception as err:  # object arrays (refused without pickle), corrupt members
            raise InputError(f"cells_npz.{name}: unreadable ({err}); {_NPZ_HOWTO}") from None
        return np.asarray(array)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``data``, ``indices`` and ``indptr``, each 1-D and of an accepted dtype."""
        out = []
        for name, dtypes in _NPZ_DTYPES.items():
            array = self._member(name)
            if array.dtype not in [np.dtype(d) for d in dtypes]:
                raise InputError(
                    f"cells_npz.{name}: dtype {array.dtype} is not accepted; send "
                    f"{' or '.join(np.dtype(d).name for d in dtypes)}"
                )
            if array.ndim != 1:
                raise InputError(
                    f"cells_npz.{name}: expected a 1-D array, got shape {list(array.shape)}"
                )
            out.append(array)
        self._archive.close()
        data, indices, indptr = out
        return data, indices, indptr


class OutputSpec(BaseModel):
    """One (layers, pooling) set wanted from the forward pass."""

    model_config = ConfigDict(extra="forbid")

    layers: int | list[int] | Literal["all"] = Field(
        default="all", description='layer index, list of indices, or "all"; -1 = last'
    )
    pooling: str = Field(default="official", description="one of the model card's poolings")


class EmbedItem(OutputSpec):
    """One request's cells, with the layers and pooling(s) wanted (docs/api.md)."""

    model: str = Field(description="a served model's name (GET /models)")
    options: dict[str, Any] = Field(default_factory=dict, description="family options")
    genes: list[str] | None = Field(default=None, description="one gene name per column")
    cells: CSRCells | None = Field(default=None, description="cells x genes, CSR")
    cells_npz: str | None = Field(
        default=None, description="base64 of an .npz of the CSR arrays (instead of cells)"
    )
    h5ad: str | None = Field(default=None, description="base64 of an .h5ad file (instead)")
    h5ad_layer: str | None = Field(default=None, description="counts from adata.layers[name]")
    gene_column: str | None = Field(default=None, description="gene names from adata.var[col]")
    format: Literal["json", "npz"] = Field(default="json", description="result encoding")
    extra_outputs: list[OutputSpec] = Field(
        default_factory=list, description="more (layers, pooling) sets from the same pass"
    )

    _counts: sp.csr_matrix = PrivateAttr()
    _genes: list[str] = PrivateAttr()
    _outputs: list[tuple[str, list[int]]] = PrivateAttr()
    _tokens: Future[TokenizedCells] = PrivateAttr()

    @model_validator(mode="after")
    def _check_against_model(self) -> EmbedItem:
        try:
            backend = active().get(self.model)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        self._outputs = [self._resolve(spec, backend.card) for spec in [self, *self.extra_outputs]]
        if len(self._outputs) > SETTINGS.max_outputs_per_request:
            raise LimitExceeded(
                f"extra_outputs: {len(self._outputs)} (layers, pooling) sets exceed the limit "
                f"of {SETTINGS.max_outputs_per_request} per request; send several requests",
                error_code=HTTPStatus.UNPROCESSABLE_ENTITY,
            )
        try:
            counts, genes = self._read_cells()
            self._check_limits(counts.shape)
            self._check_genes(genes, counts.shape[1])
            backend.check_input(counts, genes, self.options)
        except InputError as err:
            raise ValueError(str(err)) from None
        # Tokenizing starts now, on the engine's pool rather than the event loop: it overlaps
        # the dispatch that has the accelerator, and the loop stays free to form the next
        # dispatch and to answer requests.
        self._tokens = tokenize_soon(backend, counts, genes, self.options)
        self._counts, self._genes = counts, genes
        return self

    @staticmethod
    def _resolve(spec: OutputSpec, card: ModelCard) -> tuple[str, list[int]]:
        try:
            layers = resolve_layers(spec.layers, card.n_layers)
        except LayerError as err:
            raise ValueError(f"{err} ('{card.name}')") from None
        try:
            return check_pooling(spec.pooling, card), layers
        except LayerError as err:
            raise ValueError(str(err)) from None

    def _read_cells(self) -> tuple[sp.csr_matrix, list[str]]:
        if self.h5ad is not None:
            if self.cells is not None or self.cells_npz is not None or self.genes is not None:
                raise InputError("h5ad: send either h5ad or cells (or cells_npz) + genes, not both")
            return read_h5ad_upload(self.h5ad, self.h5ad_layer, self.gene_column)
        if self.cells is not None and self.cells_npz is not None:
            raise InputError(
                "cells_npz: send the cells once, either as cells (JSON lists) or as cells_npz, "
                "not both"
            )
        given = "cells_npz" if self.cells_npz is not None else "cells"
        if getattr(self, given) is None or self.genes is None:
            missing = [f for f in (given, "genes") if getattr(self, f) is None]
            raise InputError(
                f"{', '.join(missing)}: required (cells or cells_npz, with genes; "
                "or upload an AnnData as h5ad)"
            )
        if self.cells_npz is not None:
            upload = CellsNpz(self.cells_npz)
            self._check_limits(upload.shape)  # before reading the arrays
            matrix = csr_from_arrays(*upload.arrays(), upload.shape, field="cells_npz")
            return matrix, self.genes
        self._check_limits(self.cells.shape)  # before building the matrix
        return self.cells.to_csr(), self.genes

    @staticmethod
    def _check_limits(shape: tuple[int, int]) -> None:
        n_cells, n_genes = shape
        if n_cells > SETTINGS.max_cells_per_request:
            raise LimitExceeded(
                f"cells: {n_cells} cells exceed this server's limit of "
                f"{SETTINGS.max_cells_per_request} per request; send smaller chunks "
                "(the client's chunk_size does this)"
            )
        if n_genes > SETTINGS.max_genes_per_request:
            raise LimitExceeded(
                f"genes: {n_genes} genes exceed this server's limit of "
                f"{SETTINGS.max_genes_per_request} per request; drop genes the model "
                "does not know before sending"
            )

    @staticmethod
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
        if duplicated:
            raise InputError(
                f"genes: duplicate names {duplicated[:MAX_LISTED]}; "
                "sum or drop duplicated columns before sending"
            )

    @property
    def counts(self) -> sp.csr_matrix:
        return self._counts

    @property
    def gene_names(self) -> list[str]:
        return self._genes

    @property
    def tokens(self) -> Future[TokenizedCells]:
        """The cells as the model's tokens (tokenizing since the request was validated)."""
        return self._tokens

    @property
    def outputs(self) -> list[tuple[str, list[int]]]:
        """(pooling, resolved layers) for the main output, then each extra output."""
        return self._outputs


class LayerRows(BaseModel):
    pooling: str
    dim: int
    layers: dict[str, list[list[float]]] = Field(description="layer -> rows in request order")


class EmbedResult(BaseModel):
    model: str
    pooling: str
    n_cells: int
    dim: int
    layers: dict[str, list[list[float]]] = Field(
        default_factory=dict, description="layer index -> rows in request order (format json)"
    )
    npz: str | None = Field(default=None, description="base64 .npz of all outputs (format npz)")
    extra_outputs: list[LayerRows] = Field(default_factory=list)
    n_unmapped_genes: int
    unmapped_genes: list[str] = Field(description=f"at most {MAX_LISTED} of the unmapped names")


def read_h5ad_upload(
    encoded: str, layer: str | None, gene_column: str | None
) -> tuple[sp.csr_matrix, list[str]]:
    """Counts and gene names from a base64-encoded .h5ad (dense or sparse X or layer)."""
    try:
        raw = pybase64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("h5ad: not valid base64; encode the file's bytes with base64") from None
    try:
        adata = anndata.read_h5ad(io.BytesIO(raw))
    except Exception as err:  # h5py/anndata raise many types for a corrupt file
        raise InputError(f"h5ad: could not read the upload as an .h5ad file ({err})") from None
    if layer is not None:
        if layer not in adata.layers:
            raise InputError(f"h5ad_layer: no layer {layer!r}; the file has {list(adata.layers)}")
        matrix = adata.layers[layer]
    else:
        matrix = adata.X
    if matrix is None:
        raise InputError("h5ad: the file has no X; name a layer with h5ad_layer")
    if gene_column is not None:
        if gene_column not in adata.var.columns:
            raise InputError(
                f"gene_column: no var column {gene_column!r}; "
                f"the file has {list(adata.var.columns)}"
            )
        genes = adata.var[gene_column].astype(str).tolist()
    else:
        genes = adata.var_names.astype(str).tolist()
    counts = sp.csr_matrix(matrix, dtype=np.float64)
    CSRCells.check_values(counts.data, counts.indptr)
    return counts, genes
