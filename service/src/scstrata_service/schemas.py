"""The HTTP edge: the request and reply bodies of ``POST /embed`` (docs/api.md).

These models parse and nothing more, strictly: ``layers: true``, ``"1"`` or ``1.0`` and data
``"3"`` are refused rather than coerced. What the request means for a model (is the model
served, are its layers in range, are the cells well formed) is decided by admission.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from scstrata_service.contract import MAX_LISTED
from scstrata_service.coverage import DEFAULT_MIN_KNOWN_GENES, DEFAULT_MIN_MAPPED_FRACTION

_STRICT = ConfigDict(extra="forbid", strict=True)


class CSRCells(BaseModel):
    """Cells x genes in compressed sparse row form."""

    model_config = _STRICT

    data: list[float]
    indices: list[int]
    indptr: list[int]
    shape: tuple[int, int]


class OutputSpec(BaseModel):
    """One (layers, pooling) set wanted from the forward pass."""

    model_config = _STRICT

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
    min_mapped_fraction: float = Field(
        default=DEFAULT_MIN_MAPPED_FRACTION,
        ge=0,
        le=1,
        description="refuse (400) when less than this share of the counts is on genes the "
        "model knows (0 embeds whatever matched)",
    )
    min_known_genes: int | None = Field(
        default=None,
        ge=0,
        description="refuse (400) when the request carries fewer of the model's genes than "
        "this (a gene subset such as HVGs), or than half of them for a small panel; default: "
        f"the server's SCSTRATA_MIN_KNOWN_GENES ({DEFAULT_MIN_KNOWN_GENES:,}); 0 takes any subset",
    )


class EmbedRequest(BaseModel):
    """The body of ``POST /embed``: one item per request (the client sends one)."""

    model_config = _STRICT

    items: list[EmbedItem]


class TicketItem(EmbedItem):
    """What BentoML's batching endpoint receives for an admitted item (admission.py): the
    item's ticket, never the client's body, which the middleware has admitted already."""

    model_config = ConfigDict(extra="forbid", title="EmbedItem")

    ticket: SkipJsonSchema[str | None] = None


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
    npz: str | None = Field(
        default=None,
        description="base64 .npz of all outputs (format npz, without Accept: application/x-npz)",
    )
    extra_outputs: list[LayerRows] = Field(default_factory=list)
    n_unmapped_genes: int
    unmapped_genes: list[str] = Field(description=f"at most {MAX_LISTED} of the unmapped names")
    mapped_gene_fraction: float | None = Field(
        default=None, description="share of the request's gene names the model knows"
    )
    mapped_count_fraction: list[float] | None = Field(
        default=None, description="per cell, share of its counts on genes the model knows"
    )


@dataclass
class Refused(Exception):
    """A request that gets an error status, with the body ``{"error": message, "detail":
    [{"loc", "msg", "type"}]}`` (docs/api.md); ``loc`` names the field as pydantic's do."""

    status: int
    message: str
    loc: tuple[str | int, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(self.status, "error")
        return {
            "error": self.message,
            "detail": [{"loc": list(self.loc), "msg": self.message, "type": kind}],
        }


_ERROR_TYPES = {400: "value_error", 413: "limit_exceeded", 422: "limit_exceeded", 503: "busy"}


def parse_request(body: bytes) -> EmbedRequest:
    """The request of a body, or :class:`Refused` (400) naming the first bad field."""
    try:
        return EmbedRequest.model_validate_json(body)
    except pydantic.ValidationError as err:
        first = err.errors(include_url=False, include_context=False, include_input=False)[0]
        loc = tuple(first["loc"])
        where = ".".join(str(p) for p in loc) or "body"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise Refused(400, f"{where}: {first['msg']}{more}", loc) from None


def parse_request_to_arrays(body: bytes) -> EmbedRequest | Refused:
    """:func:`parse_request` with the JSON cells' lists as numpy arrays, for another process
    to run: parsing holds the GIL for as long as it takes (~1 s for 20 MB of numbers), and
    arrays come back through a pipe far faster than lists of Python numbers."""
    try:
        request = parse_request(body)
    except Refused as refusal:
        return refusal
    for index, item in enumerate(request.items):
        if item.cells is None:
            continue
        cells = item.cells
        for name, dtype in (("data", np.float64), ("indices", np.int64), ("indptr", np.int64)):
            try:
                setattr(cells, name, np.asarray(getattr(cells, name), dtype=dtype))
            except OverflowError:
                return Refused(
                    400,
                    f"cells.{name}: a value does not fit 64 bits; send indices in range",
                    ("items", index, "cells", name),
                )
    return request
