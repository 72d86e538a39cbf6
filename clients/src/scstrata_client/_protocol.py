"""The wire format of ``docs/api.md``: request items out, results and errors in.

Everything here is pure (no I/O), so the sync and async clients share it and tests need no
server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np
import pydantic
import scipy.sparse as sp

from .exceptions import InvalidRequest, ProtocolError, ServiceError, ServiceUnavailable
from .models import EmbedResult

LayersArg = int | Sequence[int] | Literal["all"]
"""What users may pass as ``layers``: one index, several, or every layer 0..L."""

# Replies that mean "not now" rather than "not this": the service sheds load with 503.
RETRYABLE_STATUS = frozenset({429, 503})

_ERROR_TEXT_LIMIT = 1000


def normalise_layers(layers: Any) -> int | list[int] | Literal["all"]:
    """Check ``layers`` locally and return its JSON form (an int, a list of ints, or "all").

    Negative indices are passed through: only the service knows L to resolve them.
    """
    if isinstance(layers, str):
        if layers == "all":
            return "all"
        raise ValueError(f"layers: expected an int, a list of ints or 'all', got {layers!r}")
    if _is_int(layers):
        return int(layers)
    if isinstance(layers, Sequence | np.ndarray):
        values = list(layers)
        if not values:
            raise ValueError("layers: the list is empty; pass at least one layer index or 'all'")
        bad = [v for v in values if not _is_int(v)]
        if bad:
            raise TypeError(f"layers: every entry must be an int, got {bad[0]!r}")
        return [int(v) for v in values]
    raise TypeError(
        f"layers: expected an int, a list of ints or 'all', got {type(layers).__name__}"
    )


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but True as a layer index is surely a mistake.
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def build_item(
    cells: sp.csr_matrix,
    genes: Sequence[str],
    *,
    model: str,
    layers: int | list[int] | Literal["all"],
    pooling: str,
    options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """One request item for ``POST /embed`` from a CSR chunk (cells x genes) and its genes."""
    if cells.shape[1] != len(genes):
        raise ValueError(f"genes: {len(genes)} names for {cells.shape[1]} columns")
    chunk = sp.csr_matrix(cells, dtype=np.float32, copy=True)
    # Duplicates and stored zeros are legal in SciPy but only bloat the body (and the former
    # would be ambiguous to a server that does not sum them).
    chunk.sum_duplicates()
    chunk.eliminate_zeros()
    return {
        "model": model,
        "layers": layers,
        "pooling": pooling,
        "options": dict(options or {}),
        "genes": list(genes),
        "cells": {
            "data": chunk.data.tolist(),
            "indices": chunk.indices.tolist(),
            "indptr": chunk.indptr.tolist(),
            "shape": [int(chunk.shape[0]), int(chunk.shape[1])],
        },
    }


def request_body(item: dict[str, Any]) -> dict[str, Any]:
    """The JSON body for one call: the client always sends exactly one item."""
    return {"items": [item]}


@dataclass
class ChunkResult:
    """A parsed result for one chunk: ``layers`` maps the resolved layer index to an array."""

    model: str
    pooling: str
    dim: int
    layers: dict[int, np.ndarray]
    n_unmapped_genes: int = 0
    unmapped_genes: list[str] = field(default_factory=list)


def parse_embed_reply(payload: Any, n_rows: int) -> ChunkResult:
    """Parse the JSON reply to a one-item request that sent ``n_rows`` cells.

    Raises ``ProtocolError`` unless the reply holds exactly one result with ``n_rows`` rows
    of ``dim`` values for every layer: a lost or extra cell must never go unnoticed.
    """
    if not isinstance(payload, list) or len(payload) != 1:
        got = f"{len(payload)} results" if isinstance(payload, list) else type(payload).__name__
        raise ProtocolError(f"expected a list with one result for one request item, got {got}")
    try:
        result = EmbedResult.model_validate(payload[0])
    except pydantic.ValidationError as exc:
        raise ProtocolError(f"malformed embed result: {exc}") from exc
    if result.n_cells != n_rows:
        raise ProtocolError(f"sent {n_rows} cells but the reply says n_cells={result.n_cells}")
    if not isinstance(result.layers, dict) or not result.layers:
        raise ProtocolError("the reply has no layers")

    layers: dict[int, np.ndarray] = {}
    for key, rows in result.layers.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ProtocolError(f"layer key {key!r} is not an integer") from None
        try:
            array = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"layer {index}: rows are not a numeric matrix ({exc})") from exc
        if array.ndim != 2 or array.shape[0] != n_rows:
            raise ProtocolError(
                f"layer {index}: sent {n_rows} cells but got an array of shape {array.shape}"
            )
        if array.shape[1] != result.dim:
            raise ProtocolError(
                f"layer {index}: rows have {array.shape[1]} values, reply says dim={result.dim}"
            )
        layers[index] = array
    return ChunkResult(
        model=result.model,
        pooling=result.pooling,
        dim=result.dim,
        layers=dict(sorted(layers.items())),
        n_unmapped_genes=result.n_unmapped_genes,
        unmapped_genes=list(result.unmapped_genes),
    )


def error_message(body: Any, text: str = "") -> str:
    """A readable one-line message from an error body; the raw text when it has no structure.

    Understands ``{"error": "...", "detail": [{"msg": "...", "loc": [...]}, ...]}`` (the
    service's and pydantic's shape) and ``{"detail": "..."}``.
    """
    parts: list[str] = []
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, str) and error.strip():
            parts.append(error.strip())
        detail = body.get("detail")
        if isinstance(detail, str) and detail.strip():
            parts.append(detail.strip())
        elif isinstance(detail, list):
            msgs = [_detail_message(d) for d in detail]
            msgs = [m for m in msgs if m and m not in parts]
            if msgs:
                joined = "; ".join(msgs)
                parts = [f"{parts[0]}: {joined}"] if parts else [joined]
    if parts:
        return "; ".join(parts)
    text = text.strip()
    if len(text) > _ERROR_TEXT_LIMIT:
        text = text[:_ERROR_TEXT_LIMIT] + "..."
    return text


def _detail_message(detail: Any) -> str:
    if isinstance(detail, str):
        return detail.strip()
    if not isinstance(detail, Mapping):
        return ""
    msg = str(detail.get("msg", "")).strip()
    # pydantic prefixes messages of ValueErrors raised in validators; the prefix adds nothing.
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    loc = detail.get("loc")
    if msg and isinstance(loc, list | tuple) and loc:
        parts = [str(p) for p in loc if p != "body"]
        # The service's own messages already start with the field name; do not repeat it.
        if parts and not msg.startswith(parts[-1]):
            where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts).lstrip(".")
            msg = f"{where}: {msg}"
    return msg


def decode_reply(response: httpx.Response) -> Any:
    """Return the JSON of a 2xx reply; raise the matching ``ServiceError`` otherwise."""
    method, url = _request_of(response)
    if response.is_success:
        try:
            return response.json()
        except ValueError as exc:
            kind = response.headers.get("content-type", "unknown content type")
            raise ProtocolError(f"{method} {url}: expected a JSON reply, got {kind}") from exc

    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    message = error_message(body, response.text) or response.reason_phrase or "no message"
    status = response.status_code
    if status in RETRYABLE_STATUS:
        cls: type[ServiceError] = ServiceUnavailable
    elif 400 <= status < 500:
        cls = InvalidRequest
    else:
        cls = ServiceError
    raise cls(status, message, body, method=method, url=url, response=response)


def _request_of(response: httpx.Response) -> tuple[str | None, str | None]:
    try:
        request = response.request
    except RuntimeError:  # a Response built by hand has no request
        return None, None
    return request.method, str(request.url)
