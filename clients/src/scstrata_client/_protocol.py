"""The wire format of ``docs/api.md``: request items out, results and errors in.

Everything here is pure (no I/O), so the sync and async clients share it and tests need no
server.
"""

from __future__ import annotations

import binascii
import io
import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np
import pybase64  # SIMD base64: ~30x the stdlib's speed on large payloads
import pydantic
import scipy.sparse as sp

from .exceptions import (
    InvalidRequest,
    ProtocolError,
    ServiceError,
    ServiceUnavailable,
    Unauthorized,
)
from .models import EmbedResult

LayersArg = int | Sequence[int] | Literal["all"]
"""What users may pass as ``layers``: one index, several, or every layer 0..L."""

TransportFormat = Literal["json", "npz"]

# Replies that mean "not now" rather than "not this": the service sheds load with 503.
RETRYABLE_STATUS = frozenset({429, 503})
# Replies that mean "who are you": a missing, wrong or insufficient token.
AUTH_STATUS = frozenset({401, 403})
# The content type of a raw binary reply (docs/api.md, "Raw binary reply").
NPZ_MEDIA_TYPE = "application/x-npz"

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


def resolve_layers(layers: int | list[int] | Literal["all"], n_layers: int) -> list[int] | None:
    """The sorted, unique indices in ``0..n_layers`` that ``layers`` (its JSON form) names.

    The same rule as the service's. Returns None for an index out of range: the service's
    4xx will say so in its own words.
    """
    if layers == "all":
        return list(range(n_layers + 1))
    requested = [layers] if isinstance(layers, int) else list(layers)
    if not requested or any(not -(n_layers + 1) <= k <= n_layers for k in requested):
        return None
    return sorted({k % (n_layers + 1) for k in requested})


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but True as a layer index is surely a mistake.
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def canonical_csr(cells: sp.csr_matrix) -> sp.csr_matrix:
    """A float32 copy with duplicates summed, stored zeros dropped and sorted indices.

    What is sent, and what the cache's data digest is taken of: two matrices holding the same
    numbers give the same bytes.
    """
    chunk = sp.csr_matrix(cells, dtype=np.float32, copy=True)
    # Duplicates and stored zeros are legal in SciPy but only bloat the body (and the former
    # would be ambiguous to a server that does not sum them).
    chunk.sum_duplicates()
    chunk.eliminate_zeros()
    return chunk


def build_item(
    cells: sp.csr_matrix,
    genes: Sequence[str],
    *,
    model: str,
    layers: int | list[int] | Literal["all"],
    pooling: str,
    options: Mapping[str, Any] | None,
    format: TransportFormat = "json",
    cells_npz: bool = False,
    extra_outputs: Sequence[Mapping[str, Any]] = (),
    fields: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One request item for ``POST /embed`` from a CSR chunk (cells x genes) and its genes.

    ``format="npz"`` asks for the binary reply; JSON, the default, sends no ``format`` field
    at all, so the item stays valid for a service that predates the field. ``cells_npz=True``
    sends the cells as the binary ``cells_npz`` field instead of JSON lists under ``cells``.
    ``extra_outputs`` (``{"layers", "pooling"}`` each) and ``fields`` (other item fields, such
    as ``min_known_genes``) are sent only when given.
    """
    if cells.shape[1] != len(genes):
        raise ValueError(f"genes: {len(genes)} names for {cells.shape[1]} columns")
    if format not in ("json", "npz"):
        raise ValueError(f"format: expected 'json' or 'npz', got {format!r}")
    chunk = canonical_csr(cells)
    item: dict[str, Any] = {
        "model": model,
        "layers": layers,
        "pooling": pooling,
        "options": dict(options or {}),
        "genes": list(genes),
    }
    if cells_npz:
        item["cells_npz"] = encode_cells_npz(chunk)
    else:
        item["cells"] = {
            "data": chunk.data.tolist(),
            "indices": chunk.indices.tolist(),
            "indptr": chunk.indptr.tolist(),
            "shape": [int(chunk.shape[0]), int(chunk.shape[1])],
        }
    if format == "npz":
        item["format"] = "npz"
    if extra_outputs:
        item["extra_outputs"] = [dict(spec) for spec in extra_outputs]
    item.update(fields or {})
    return item


_INT32_MAX = np.iinfo(np.int32).max


def encode_cells_npz(chunk: sp.csr_matrix) -> str:
    """The base64 ``.npz`` of a canonical CSR chunk (docs/api.md, ``cells_npz``).

    ``data`` float32, ``indices`` and ``indptr`` int32 (int64 past 2**31 - 1), ``shape`` int64.
    Stored uncompressed: counts compress poorly and zlib would cost more than it saves.
    """
    index_type = np.int32 if max(chunk.nnz, chunk.shape[1]) <= _INT32_MAX else np.int64
    buffer = io.BytesIO()
    np.savez(
        buffer,
        data=np.asarray(chunk.data, dtype=np.float32),
        indices=np.asarray(chunk.indices, dtype=index_type),
        indptr=np.asarray(chunk.indptr, dtype=index_type),
        shape=np.asarray(chunk.shape, dtype=np.int64),
    )
    return pybase64.b64encode(buffer.getbuffer()).decode("ascii")


def request_body(item: dict[str, Any]) -> dict[str, Any]:
    """The JSON body for one call: the client always sends exactly one item."""
    return {"items": [item]}


def request_content(body: dict[str, Any]) -> bytes:
    """``body`` (from :func:`request_body`) as JSON bytes, ready to send.

    A ``cells_npz`` string is base64, with nothing JSON would escape, so it is spliced in as
    it is instead of going through ``json.dumps``, which scans every character: 50 ms of a
    1,000-cell chunk's 90 ms to encode.
    """
    (item,) = body["items"]
    if "cells_npz" not in item:
        return json.dumps(body).encode()
    rest = json.dumps({k: v for k, v in item.items() if k != "cells_npz"})
    npz = item["cells_npz"].encode("ascii")
    tail = b"}" if rest == "{}" else b", " + rest[1:].encode()
    return b'{"items": [{"cells_npz": "' + npz + b'"' + tail + b"]}"


@dataclass
class ChunkResult:
    """A parsed result for one chunk: ``layers`` maps the resolved layer index to an array."""

    model: str
    pooling: str
    dim: int
    layers: dict[int, np.ndarray]
    n_unmapped_genes: int = 0
    unmapped_genes: list[str] = field(default_factory=list)
    extras: list[dict[int, np.ndarray]] = field(default_factory=list)
    """Each extra output's layers, in the order the request listed them."""


@dataclass(frozen=True)
class RawNpz:
    """A raw binary reply (``Content-Type: application/x-npz``): the body is the ``.npz``."""

    content: bytes

    def __repr__(self) -> str:
        return f"RawNpz({len(self.content)} bytes)"


def parse_embed_reply(
    payload: Any, n_rows: int, *, model: str = "", pooling: str = "", n_extra: int = 0
) -> ChunkResult:
    """Parse the reply to a one-item request that sent ``n_rows`` cells (and asked for
    ``n_extra`` extra outputs).

    ``payload`` is what ``decode_reply`` returned: the JSON list of results (with ``layers``,
    or with ``npz`` as base64), or a ``RawNpz``. A raw reply carries no model or pooling;
    ``model`` and ``pooling`` (those of the request) fill them in.

    Raises ``ProtocolError`` unless the reply holds exactly one result with ``n_rows`` rows
    of ``dim`` values for every layer, and ``n_extra`` extra outputs: a lost or extra cell
    must never go unnoticed.
    """
    if isinstance(payload, RawNpz):
        chunk = parse_npz(payload.content, n_rows, model=model, pooling=pooling)
        return _with_extras(chunk, n_extra)
    if not isinstance(payload, list) or len(payload) != 1:
        got = f"{len(payload)} results" if isinstance(payload, list) else type(payload).__name__
        raise ProtocolError(f"expected a list with one result for one request item, got {got}")
    try:
        result = EmbedResult.model_validate(payload[0])
    except pydantic.ValidationError as exc:
        raise ProtocolError(f"malformed embed result: {exc}") from exc
    if result.n_cells != n_rows:
        raise ProtocolError(f"sent {n_rows} cells but the reply says n_cells={result.n_cells}")
    if result.layers is None and result.npz is not None:
        try:
            raw = pybase64.b64decode(result.npz, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"the reply's npz is not valid base64 ({exc})") from exc
        chunk = parse_npz(raw, n_rows, model=result.model, pooling=result.pooling)
        if chunk.dim != result.dim:
            raise ProtocolError(f"npz rows have {chunk.dim} values, reply says dim={result.dim}")
        return _with_extras(chunk, n_extra)
    layers = _json_layers(result.layers, n_rows, result.dim)
    extras = getattr(result, "extra_outputs", None) or []
    if not isinstance(extras, list) or len(extras) != n_extra:
        got = len(extras) if isinstance(extras, list) else type(extras).__name__
        raise ProtocolError(f"asked for {n_extra} extra outputs, the reply holds {got}")
    extra_layers = []
    for i, extra in enumerate(extras):
        if not isinstance(extra, Mapping) or not isinstance(extra.get("dim"), int):
            raise ProtocolError(f"extra output {i}: expected an object with dim and layers")
        extra_layers.append(_json_layers(extra.get("layers"), n_rows, extra["dim"], f"extra {i} "))
    return ChunkResult(
        model=result.model,
        pooling=result.pooling,
        dim=result.dim,
        layers=layers,
        n_unmapped_genes=result.n_unmapped_genes,
        unmapped_genes=list(result.unmapped_genes),
        extras=extra_layers,
    )


def _json_layers(
    rows_by_layer: Any, n_rows: int, dim: int, what: str = ""
) -> dict[int, np.ndarray]:
    """``{"<k>": rows}`` of a JSON reply as float32 arrays, each ``n_rows`` x ``dim``."""
    if not isinstance(rows_by_layer, dict) or not rows_by_layer:
        raise ProtocolError(f"the reply has no {what}layers")
    layers: dict[int, np.ndarray] = {}
    for key, rows in rows_by_layer.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ProtocolError(f"{what}layer key {key!r} is not an integer") from None
        try:
            array = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(
                f"{what}layer {index}: rows are not a numeric matrix ({exc})"
            ) from exc
        if array.ndim != 2 or array.shape[0] != n_rows:
            raise ProtocolError(
                f"{what}layer {index}: sent {n_rows} cells but got an array of shape {array.shape}"
            )
        if array.shape[1] != dim:
            raise ProtocolError(
                f"{what}layer {index}: rows have {array.shape[1]} values, reply says dim={dim}"
            )
        layers[index] = array
    return dict(sorted(layers.items()))


def _with_extras(chunk: ChunkResult, n_extra: int) -> ChunkResult:
    if len(chunk.extras) != n_extra:
        raise ProtocolError(
            f"asked for {n_extra} extra outputs, the npz reply holds {len(chunk.extras)}"
        )
    return chunk


_NPZ_LAYER = "layer_"
_NPZ_EXTRA = re.compile(r"^extra(\d+)_layer_(-?\d+)$")


def parse_npz(raw: bytes, n_rows: int, *, model: str = "", pooling: str = "") -> ChunkResult:
    """Parse an ``.npz`` reply (docs/api.md): ``layer_<k>`` members, cells x dim each, and
    ``extra<i>_layer_<k>`` for extra output ``i``.

    Read with ``allow_pickle=False``: a reply can hold numbers and strings, never code.
    """
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ProtocolError(f"the npz reply is not a readable .npz file ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ProtocolError("the npz reply holds a single array, not an .npz archive")
    layers: dict[int, np.ndarray] = {}
    extras: dict[int, dict[int, np.ndarray]] = {}
    n_unmapped = 0
    unmapped: list[str] = []
    dim: int | None = None
    with archive:
        try:
            for name in archive.files:
                extra = _NPZ_EXTRA.match(name)
                if name.startswith(_NPZ_LAYER):
                    suffix = name[len(_NPZ_LAYER) :]
                    if not suffix.lstrip("-").isdigit():
                        raise ProtocolError(f"npz member {name!r} has no integer layer index")
                    array = _npz_rows(archive, name, n_rows)
                    if dim is not None and array.shape[1] != dim:
                        raise ProtocolError(
                            f"layer {suffix}: rows have {array.shape[1]} values, other layers {dim}"
                        )
                    dim = int(array.shape[1])
                    layers[int(suffix)] = array
                elif extra is not None:
                    i, k = int(extra.group(1)), int(extra.group(2))
                    extras.setdefault(i, {})[k] = _npz_rows(archive, name, n_rows)
                elif name == "n_unmapped_genes":
                    n_unmapped = int(archive[name])
                elif name == "unmapped_genes":
                    unmapped = [str(g) for g in archive[name].tolist()]
        except ValueError as exc:  # e.g. an object array, refused without pickle
            raise ProtocolError(f"the npz reply holds an unreadable member ({exc})") from exc
    if not layers or dim is None:
        raise ProtocolError("the npz reply has no layer_<k> members")
    if sorted(extras) != list(range(len(extras))):
        raise ProtocolError(f"the npz reply's extra outputs are numbered {sorted(extras)}")
    for i, rows in extras.items():
        if len({a.shape[1] for a in rows.values()}) != 1:
            raise ProtocolError(f"extra output {i}: its layers differ in width")
    return ChunkResult(
        model=model,
        pooling=pooling,
        dim=dim,
        layers=dict(sorted(layers.items())),
        n_unmapped_genes=n_unmapped,
        unmapped_genes=unmapped,
        extras=[dict(sorted(extras[i].items())) for i in range(len(extras))],
    )


def _npz_rows(archive: Any, name: str, n_rows: int) -> np.ndarray:
    array = np.asarray(archive[name])
    if not np.issubdtype(array.dtype, np.floating):
        raise ProtocolError(f"npz member {name!r} has dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] != n_rows:
        raise ProtocolError(
            f"npz member {name!r}: sent {n_rows} cells but got an array of shape {array.shape}"
        )
    return array.astype(np.float32, copy=False)


def error_message(body: Any, text: str = "") -> str:
    """A readable one-line message from an error body; the raw text when it has no structure.

    Understands ``{"error": "...", "detail": [{"msg": "...", "loc": [...]}, ...]}`` (the
    service's and pydantic's shape), ``{"detail": "..."}``, and a list of such objects (BentoML
    answers a limit hit inside the batched endpoint with one per request item).
    """
    if isinstance(body, list) and body and all(isinstance(b, Mapping) for b in body):
        messages = [error_message(b) for b in body]
        if all(messages):
            return "; ".join(dict.fromkeys(messages))
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
    """Return the JSON of a 2xx reply (a ``RawNpz`` for a binary one); raise otherwise.

    A non-2xx reply raises the matching ``ServiceError`` subclass.
    """
    method, url = _request_of(response)
    if response.is_success:
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == NPZ_MEDIA_TYPE:
            return RawNpz(response.content)
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
    elif status in AUTH_STATUS:
        cls = Unauthorized
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
