"""The HTTP edge: request items and results (docs/api.md).

Every client mistake is caught here, per request, while BentoML parses the body: a
validator error becomes a 400 for that request alone. Checks that ran later, inside an
adaptive batch, would fail every request merged into it.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from scstrata_service.backend import InputError
from scstrata_service.layers import LayerError, resolve_layers
from scstrata_service.registry import active
from scstrata_service.settings import SETTINGS

MAX_LISTED = 50


class CSRCells(BaseModel):
    """Cells x genes in compressed sparse row form."""

    model_config = ConfigDict(extra="forbid")

    data: list[float]
    indices: list[int]
    indptr: list[int]
    shape: tuple[int, int]

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
        if not np.all(np.isfinite(data)):
            raise InputError("cells.data: contains NaN or infinity; send finite expression values")
        if np.any(data < 0):
            rows = np.unique(np.searchsorted(indptr, np.flatnonzero(data < 0), side="right") - 1)
            raise InputError(
                f"cells.data: negative values in rows {rows[:MAX_LISTED].tolist()}; "
                "counts must be >= 0"
            )
        matrix = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))
        if not matrix.has_canonical_format:
            matrix.sum_duplicates()  # repeated (row, column) entries add up, as in scipy
        return matrix


class EmbedItem(BaseModel):
    """One request's cells, with the layers and pooling wanted."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a served model's name (GET /models)")
    layers: int | list[int] | Literal["all"] = Field(
        default="all", description='layer index, list of indices, or "all"; -1 = last'
    )
    pooling: str = Field(default="official", description="one of the model card's poolings")
    options: dict[str, Any] = Field(default_factory=dict, description="family options")
    genes: list[str] = Field(description="one gene name per column of cells")
    cells: CSRCells

    _counts: sp.csr_matrix = PrivateAttr()
    _layers: list[int] = PrivateAttr()

    @model_validator(mode="after")
    def _check_against_model(self) -> EmbedItem:
        try:
            backend = active().get(self.model)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        card = backend.card
        try:
            self._layers = resolve_layers(self.layers, card.n_layers)
        except LayerError as err:
            raise ValueError(f"{err} ('{card.name}')") from None
        if self.pooling not in card.poolings:
            raise ValueError(
                f"pooling: {self.pooling!r} is not offered by '{card.name}'; "
                f"choose from {sorted(card.poolings)}"
            )
        n_cells, n_genes = self.cells.shape
        if n_cells > SETTINGS.max_cells_per_request:
            raise ValueError(
                f"cells.shape: {n_cells} cells exceed this server's limit of "
                f"{SETTINGS.max_cells_per_request} per request; send smaller chunks "
                "(the client's chunk_size does this)"
            )
        if n_genes > SETTINGS.max_genes_per_request:
            raise ValueError(
                f"cells.shape: {n_genes} genes exceed the limit of {SETTINGS.max_genes_per_request}"
            )
        if len(self.genes) != n_genes:
            raise ValueError(
                f"genes: {len(self.genes)} names for {n_genes} columns in cells.shape; "
                "send one name per column"
            )
        seen: set[str] = set()
        duplicated = sorted({g for g in self.genes if g in seen or seen.add(g)})
        if duplicated:
            raise ValueError(
                f"genes: duplicate names {duplicated[:MAX_LISTED]}; "
                "sum or drop duplicated columns before sending"
            )
        try:
            self._counts = self.cells.to_csr()
            backend.check_input(self._counts, self.genes, self.options)
        except InputError as err:
            raise ValueError(str(err)) from None
        return self

    @property
    def counts(self) -> sp.csr_matrix:
        return self._counts

    @property
    def resolved_layers(self) -> list[int]:
        return self._layers


class EmbedResult(BaseModel):
    model: str
    pooling: str
    n_cells: int
    dim: int
    layers: dict[str, list[list[float]]] = Field(description="layer index -> rows in request order")
    n_unmapped_genes: int
    unmapped_genes: list[str] = Field(description=f"at most {MAX_LISTED} of the unmapped names")
