"""The HTTP edge: request items and results (docs/api.md).

Every client mistake is caught here, per request, while BentoML parses the body: a
validator error becomes a 400 for that request alone. Checks that ran later, inside an
adaptive batch, would fail every request merged into it.
"""

from __future__ import annotations

import base64
import binascii
import io
from http import HTTPStatus
from typing import Any, Literal

import anndata
import numpy as np
import scipy.sparse as sp
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from scstrata_service.backend import InputError, ModelCard
from scstrata_service.layers import LayerError, resolve_layers
from scstrata_service.registry import active
from scstrata_service.settings import SETTINGS

MAX_LISTED = 50


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
    def check_values(data: np.ndarray, indptr: np.ndarray) -> None:
        """Finite and non-negative, or an InputError naming the rows."""
        if not np.all(np.isfinite(data)):
            raise InputError("cells.data: contains NaN or infinity; send finite expression values")
        if np.any(data < 0):
            rows = np.unique(np.searchsorted(indptr, np.flatnonzero(data < 0), side="right") - 1)
            raise InputError(
                f"cells.data: negative values in rows {rows[:MAX_LISTED].tolist()}; "
                "counts must be >= 0"
            )

    def to_csr(self) -> sp.csr_matrix:
        n_rows, n_cols = self.shape
        data = np.asarray(self.data, dtype=np.float64)
        indices = np.asarray(self.indices, dtype=np.int64)
        indptr = np.asarray(self.indptr, dtype=np.int64)
        if n_rows < 1 or n_cols < 1:
            raise InputError(
                f"cells.shape: {list(self.shape)} is empty; send at least one cell and gene"
            )
        if len(indptr) != n_rows + 1:
            raise InputError(
                f"cells.indptr: has {len(indptr)} entries; shape {list(self.shape)} "
                f"needs {n_rows + 1}"
            )
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(data):
            raise InputError(
                "cells.indptr: must start at 0, never decrease, and end at len(cells.data)"
            )
        if len(indices) != len(data):
            raise InputError(
                f"cells.indices: {len(indices)} entries but cells.data has {len(data)}"
            )
        if len(indices) and (indices.min() < 0 or indices.max() >= n_cols):
            raise InputError(f"cells.indices: column indices must lie in 0..{n_cols - 1}")
        self.check_values(data, indptr)
        matrix = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))
        if not matrix.has_canonical_format:
            matrix.sum_duplicates()  # repeated (row, column) entries add up, as in scipy
        return matrix


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
        self._counts, self._genes = counts, genes
        return self

    @staticmethod
    def _resolve(spec: OutputSpec, card: ModelCard) -> tuple[str, list[int]]:
        try:
            layers = resolve_layers(spec.layers, card.n_layers)
        except LayerError as err:
            raise ValueError(f"{err} ('{card.name}')") from None
        if spec.pooling not in card.poolings:
            raise ValueError(
                f"pooling: {spec.pooling!r} is not offered by '{card.name}'; "
                f"choose from {sorted(card.poolings)}"
            )
        return spec.pooling, layers

    def _read_cells(self) -> tuple[sp.csr_matrix, list[str]]:
        if self.h5ad is not None:
            if self.cells is not None or self.genes is not None:
                raise InputError("h5ad: send either h5ad or cells + genes, not both")
            return read_h5ad_upload(self.h5ad, self.h5ad_layer, self.gene_column)
        if self.cells is None or self.genes is None:
            missing = [f for f in ("cells", "genes") if getattr(self, f) is None]
            raise InputError(f"{', '.join(missing)}: required (or upload an AnnData as h5ad)")
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
        raw = base64.b64decode(encoded, validate=True)
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
