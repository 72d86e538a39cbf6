"""A fake scstrata service for httpx.MockTransport: answers like docs/api.md, fails on demand.

Row i of layer k in every reply is ``[sum of cell i's counts, k, p, 0, ...]`` (p: the pooling's
place in ``dims``, 0 for "official"), so a test can tell whether every cell came back once, in
order, under the right layer and pooling.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

import httpx
import numpy as np
import scipy.sparse as sp

from scstrata_client import AsyncClient, Client
from scstrata_client._core import EmbedJob
from scstrata_client.models import ModelCard

URL = "http://svc:3000"


def plan_job(
    cells: Any, genes: Any, *, chunk_size: int, layers: Any = "all", dim: int | None = None
) -> EmbedJob:
    """A planned job for model "m" with the official pooling; with ``dim``, the job knows the
    model's card (12 layers, ``dim``-wide vectors), so it can size each chunk's reply."""
    card = None
    if dim is not None:
        card = ModelCard(
            name="m", family="f", n_layers=12, poolings={"official": dim}, checkpoint_digest="d"
        )
    return EmbedJob.plan(
        cells,
        genes,
        model="m",
        layers=layers,
        pooling="official",
        options=None,
        chunk_size=chunk_size,
        card=card,
    )


def resolve(layers: Any, n_layers: int) -> list[int]:
    if layers == "all":
        return list(range(n_layers + 1))
    wanted = [layers] if isinstance(layers, int) else layers
    return sorted({k % (n_layers + 1) for k in wanted})


def item_matrix(item: dict[str, Any]) -> sp.csr_matrix:
    """The cells of a request item, sent as JSON ``cells`` or as binary ``cells_npz``."""
    if "cells_npz" in item:
        with np.load(io.BytesIO(base64.b64decode(item["cells_npz"])), allow_pickle=False) as npz:
            return sp.csr_matrix(
                (npz["data"], npz["indices"], npz["indptr"]), shape=tuple(npz["shape"])
            )
    cells = item["cells"]
    return sp.csr_matrix(
        (cells["data"], cells["indices"], cells["indptr"]), shape=tuple(cells["shape"])
    )


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


class FakeService:
    """A callable for ``httpx.MockTransport``.

    ``failures`` maps a 0-based call number (``GET /models`` included) to an exception to
    raise or a response to return instead of the answer. ``supports_npz=False`` mimics a
    service that predates the ``format`` field (and ``cells_npz``, unless
    ``supports_cells_npz`` says otherwise); ``supports_cells_npz=False`` one that predates the
    ``cells_npz`` field, which it refuses as an extra input (``unknown_fields="forbid"``, as
    the real service does) or ignores and then misses ``cells`` (``"ignore"``). ``token``
    makes it demand that bearer token. ``GET /info`` lists the features it has; ``info=False``
    answers it 404, as a service older than /info does.
    """

    def __init__(
        self,
        *,
        n_layers: int = 12,
        dims: dict[str, int] | None = None,
        failures: dict[int, Any] | None = None,
        supports_npz: bool = True,
        supports_cells_npz: bool | None = None,
        unknown_fields: str = "forbid",
        token: str | None = None,
        delay: float = 0.0,
        checkpoint_digest: str = "sha256:00",
        record: bool = True,
        info: bool = True,
    ):
        self.n_layers = n_layers
        self.dims = dims or {"official": 3, "S": 3}
        self.failures = failures or {}
        self.supports_npz = supports_npz
        self.supports_cells_npz = supports_npz if supports_cells_npz is None else supports_cells_npz
        self.unknown_fields = unknown_fields
        self.token = token
        self.delay = delay
        self.checkpoint_digest = checkpoint_digest
        self.info = info
        self.calls: list[httpx.Request] = []
        self.record = record
        """False: count calls (``n_calls``) without keeping each request and its body."""
        self.n_calls = 0
        self.stopped = False
        """While true, every request fails as if nothing listened on the port."""
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def card(self) -> dict[str, Any]:
        return {
            "name": "scfoundation",
            "family": "scfoundation",
            "n_layers": self.n_layers,
            "hidden_size": 3,
            "poolings": dict(self.dims),
            "default_pooling": "official",
            "gene_id_kind": "symbol",
            "vocab_size": 19264,
            "checkpoint_digest": self.checkpoint_digest,
            "demo_weights": True,
            "options": {"pre_normalized": "..."},
        }

    @property
    def info_calls(self) -> int:
        return sum(r.url.path == "/info" for r in self.calls)

    @property
    def embed_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.calls if r.url.path == "/embed"]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            n = self.n_calls
            self.n_calls += 1
            if self.record:
                self.calls.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            return self._answer(n, request)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, n: int, request: httpx.Request) -> httpx.Response:
        if self.stopped:
            raise httpx.ConnectError("injected: the replica is stopped")
        failure = self.failures.get(n)
        if isinstance(failure, Exception):
            raise failure
        if failure is not None:
            return failure
        if self.token is not None and request.headers.get("authorization") != (
            f"Bearer {self.token}"
        ):
            return httpx.Response(401, json={"error": "missing or invalid bearer token"})
        if request.url.path == "/models":
            return httpx.Response(200, json=[self.card()])
        if request.url.path == "/info":
            if not self.info:
                return httpx.Response(404, text="Not Found")
            features = ["json", "extra_outputs"]
            features += ["npz", "raw_npz_reply"] if self.supports_npz else []
            features += ["cells_npz"] if self.supports_cells_npz else []
            return httpx.Response(200, json={"service": "scstrata", "features": features})
        if request.url.path in ("/readyz", "/livez"):
            return httpx.Response(200, json={"status": "ok"})
        items = json.loads(request.content)["items"]
        for item in items:
            refused = self._refusal(item)
            if refused is not None:
                return refused
        raw = request.headers.get("accept") == "application/x-npz"
        if raw and len(items) == 1 and items[0].get("format") == "npz":
            return httpx.Response(
                200,
                content=npz_bytes(self._arrays(items[0])),
                headers={"content-type": "application/x-npz"},
            )
        return httpx.Response(200, json=[self.result(item) for item in items])

    def _refusal(self, item: dict[str, Any]) -> httpx.Response | None:
        """A 400 like an older service's (pydantic's words) for fields it does not know."""
        unknown = []
        if "format" in item and not self.supports_npz:
            unknown.append("format")
        if "cells_npz" in item and not self.supports_cells_npz:
            if self.unknown_fields == "forbid":
                unknown.append("cells_npz")
            elif "cells" not in item:
                msg = "Value error, cells: required (or upload an AnnData as h5ad)"
                detail = [{"type": "value_error", "loc": ["items", 0], "msg": msg}]
                return httpx.Response(400, json={"error": "invalid request", "detail": detail})
        if not unknown:
            return None
        detail = [
            {
                "type": "extra_forbidden",
                "loc": ["items", 0, name],
                "msg": "Extra inputs are not permitted",
            }
            for name in unknown
        ]
        return httpx.Response(400, json={"error": "invalid request", "detail": detail})

    def _layers(self, item: dict[str, Any], spec: dict[str, Any] | None = None) -> dict:
        """Layer -> rows of the item's own output, or of one of its extra outputs (``spec``)."""
        spec = spec or item
        matrix = item_matrix(item)
        dim = self.dims[spec["pooling"]]
        rows = np.zeros((matrix.shape[0], dim), dtype=np.float32)
        rows[:, 0] = np.asarray(matrix.sum(axis=1)).ravel()
        rows[:, 2] = list(self.dims).index(spec["pooling"])
        out = {}
        for k in resolve(spec.get("layers", "all"), self.n_layers):
            rows[:, 1] = k
            out[k] = rows.copy()
        return out

    def _arrays(self, item: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays = {f"layer_{k}": a for k, a in self._layers(item).items()}
        for i, spec in enumerate(item.get("extra_outputs", [])):
            arrays.update({f"extra{i}_layer_{k}": a for k, a in self._layers(item, spec).items()})
        arrays["unmapped_genes"] = np.array(["FOO"])
        arrays["n_unmapped_genes"] = np.array(1, dtype=np.int64)
        return arrays

    def result(self, item: dict[str, Any]) -> dict[str, Any]:
        layers = self._layers(item)
        result = {
            "model": item["model"],
            "pooling": item["pooling"],
            "n_cells": item_matrix(item).shape[0],
            "dim": self.dims[item["pooling"]],
            "n_unmapped_genes": 1,
            "unmapped_genes": ["FOO"],
        }
        if item.get("format") == "npz":
            result["npz"] = base64.b64encode(npz_bytes(self._arrays(item))).decode()
        else:
            result["layers"] = {str(k): a.tolist() for k, a in layers.items()}
            result["extra_outputs"] = [
                {
                    "pooling": spec["pooling"],
                    "dim": self.dims[spec["pooling"]],
                    "layers": {str(k): a.tolist() for k, a in self._layers(item, spec).items()},
                }
                for spec in item.get("extra_outputs", [])
            ]
        return result

    def client(self, **kwargs: Any) -> tuple[Client, list[float]]:
        """A Client on this fake (cache off unless asked) and the list of its retry waits."""
        kwargs.setdefault("cache", False)
        client = Client(URL, transport=httpx.MockTransport(self), **kwargs)
        sleeps: list[float] = []
        client._sleep = sleeps.append
        return client, sleeps

    def async_client(self, **kwargs: Any) -> tuple[AsyncClient, list[float]]:
        kwargs.setdefault("cache", False)
        client = AsyncClient(URL, transport=httpx.MockTransport(self), **kwargs)
        sleeps: list[float] = []
        client._sleep = sleeps.append
        return client, sleeps


class Replicas:
    """Several ``FakeService``s behind one ``httpx.MockTransport``, told apart by host."""

    def __init__(self, *fakes: FakeService):
        self.fakes = {f"svc{i}": fake for i, fake in enumerate(fakes)}

    @property
    def urls(self) -> list[str]:
        return [f"http://{host}:3000" for host in self.fakes]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        return self.fakes[request.url.host](request)

    def client(self, **kwargs: Any) -> Client:
        kwargs.setdefault("cache", False)
        client = Client(self.urls, transport=httpx.MockTransport(self), **kwargs)
        client._sleep = lambda delay: None
        return client


class RecordingTransport(httpx.HTTPTransport):
    """The real network transport, recording each request and failing some on purpose.

    ``failures`` maps a 0-based call number to an exception to raise instead of sending, a
    response to return instead of sending, or ``"lose-reply"``: send the request, let the
    server do the work, then raise as if the connection dropped before the reply arrived.
    ``on_reply`` is called with the number of ``/embed`` replies received so far.
    """

    def __init__(self, failures: dict[int, Any] | None = None, on_reply: Any = None):
        super().__init__()
        self.failures = failures or {}
        self.on_reply = on_reply
        self.requests: list[httpx.Request] = []
        self.errors: list[str] = []
        self.embed_replies = 0
        self.reply_kinds: list[tuple[str, int]] = []  # (content type, bytes) per /embed 200
        self._lock = threading.Lock()

    @property
    def embed_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == "/embed"]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            n = len(self.requests)
            self.requests.append(request)
        failure = self.failures.get(n)
        if isinstance(failure, Exception):
            raise failure
        if isinstance(failure, httpx.Response):
            return failure
        try:
            response = super().handle_request(request)
            if failure == "lose-reply":
                response.read()
                response.close()
                raise httpx.RemoteProtocolError("injected: the reply was lost")
        except httpx.HTTPError as exc:
            with self._lock:
                self.errors.append(type(exc).__name__)
            raise
        if request.url.path == "/embed" and response.status_code == 200:
            body = response.read()
            with self._lock:
                self.embed_replies += 1
                count = self.embed_replies
                self.reply_kinds.append((response.headers.get("content-type", ""), len(body)))
            if self.on_reply is not None:
                self.on_reply(count)
        return response
