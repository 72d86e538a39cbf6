"""HTTP concerns in front of the BentoML app: bearer auth, body size and time, admission.

For ``POST /embed`` the middleware reads the body itself (within the size limit and the read
timeout), has it admitted on a worker thread (admission.py; the event loop stays free to
answer ``/livez`` and other requests), hands BentoML's batching endpoint the admitted items'
tickets, and writes each request's reply once, as it was made off the loop: JSON, a raw
``.npz`` when the client accepts one, or the request's own error.
"""

from __future__ import annotations

import hmac
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import anyio
import anyio.to_thread

from scstrata_service.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
NPZ_MEDIA_TYPE = "application/x-npz"


class Reply(Protocol):
    status: int
    content_type: str
    body: bytes
    headers: MutableMapping[str, str] | Any


class Admission(Protocol):
    """What ``admit`` returns for a body it accepts (admission.Admission)."""

    def replay_body(self) -> bytes: ...
    def abandon(self) -> None: ...
    def reply(self) -> Reply | None: ...
    def release(self) -> None: ...


class Refusal(Protocol):
    status: int
    headers: Any

    def body(self) -> dict: ...


Admit = Callable[[bytes, bool], Admission]


async def _send_bytes(
    send: Send, status: int, content_type: str, payload: bytes, headers: Any = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(payload)).encode()),
                *[(k.encode(), str(v).encode()) for k, v in dict(headers).items()],
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _send_json(send: Send, status: int, body: dict, headers: Any = ()) -> None:
    await _send_bytes(send, status, "application/json", json.dumps(body).encode(), headers)


def _error(message: str, loc: list | None = None) -> dict:
    """The error body of docs/api.md: the message, and the same as pydantic-style detail."""
    return {"error": message, "detail": [{"loc": loc or [], "msg": message, "type": "error"}]}


class AuthFailures:
    """Wrong-token attempts per client address within a minute; past the limit: 429."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._times: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        times = self._times.setdefault(client, deque())
        while times and times[0] < time.monotonic() - 60:
            times.popleft()
        if not times:
            del self._times[client]  # bounded: only addresses with recent failures are kept
            return deque()
        return times

    def wait_s(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        times = self._recent(client)
        if len(times) < self.per_minute:
            return None
        return max(1, int(times[0] + 60 - time.monotonic()) + 1)

    def record(self, client: str) -> None:
        self._times.setdefault(client, deque()).append(time.monotonic())


def accepts_npz(accept: str) -> bool:
    """Whether an ``Accept`` header names ``application/x-npz`` with a q above 0."""
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media.lower() != NPZ_MEDIA_TYPE:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


class ScstrataMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, admit: Admit | None = None):
        self.app, self.admit = app, admit
        self.token = settings.token.encode() if settings.token else None
        self.max_body_bytes = settings.max_body_bytes
        self.read_timeout_s = settings.read_timeout_s
        self.admit_threads = settings.admit_threads
        self.failures = AuthFailures(settings.auth_failures_per_minute)
        self.retry_after_s = settings.retry_after_s
        self._limiter: anyio.CapacityLimiter | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        if self.token and scope["path"] not in HEALTH_PATHS:
            refusal = self._check_auth(scope, raw_headers)
            if refusal is not None:
                await refusal(send)
                return
        declared_text = headers.get("content-length", "")
        declared = int(declared_text) if declared_text.isdigit() else None
        if declared is not None and declared > self.max_body_bytes:
            await _send_json(send, 413, _error(self._too_large(declared), ["body"]))
            return
        if scope["path"] != "/embed" or self.admit is None:
            await self.app(scope, self._counting(receive, send), send)
            return
        if scope["method"] != "POST":
            message = f"method: /embed takes POST, not {scope['method']}"
            await _send_json(send, 405, _error(message), {"allow": "POST"})
            return
        media_type = headers.get("content-type", "application/json").split(";")[0].strip()
        if media_type.lower() != "application/json":
            # BentoML would try multipart parsing and fail with a 500 on a malformed header
            message = (
                f"content-type: /embed takes application/json, not {media_type!r} "
                "(see docs/api.md; upload AnnData files as base64 in the 'h5ad' field)"
            )
            await _send_json(send, 415, _error(message, ["header", "content-type"]))
            return
        await self._embed(scope, receive, send, accepts_npz(headers.get("accept", "")))

    def _check_auth(
        self, scope: Scope, raw_headers: list[tuple[bytes, bytes]]
    ) -> Callable[[Send], Awaitable[None]] | None:
        """None when the request may pass; else what to answer (401, or 429 past the limit)."""
        client = (scope.get("client") or ("?",))[0]
        wait = self.failures.wait_s(client)
        if wait is not None:
            message = f"authorization: too many wrong tokens from this address; retry in {wait} s"
            return lambda send: _send_json(send, 429, _error(message), {"retry-after": wait})
        given = [v for k, v in raw_headers if k.lower() == b"authorization"]
        # Bytes compared exactly: the scheme is case-insensitive (RFC 6750), nothing else is;
        # no stripping, and anything but ASCII is wrong at once.
        value = given[0] if len(given) == 1 else b""
        scheme, _, credentials = value.partition(b" ")
        if (
            value.isascii()
            and scheme.lower() == b"bearer"
            and hmac.compare_digest(credentials, self.token or b"")
        ):
            return None
        self.failures.record(client)
        message = (
            "authorization: missing or wrong bearer token; send the header "
            "'Authorization: Bearer <token>' (client: token= or SCSTRATA_TOKEN)"
        )
        return lambda send: _send_json(
            send, 401, _error(message, ["header", "authorization"]), {"www-authenticate": "Bearer"}
        )

    async def _embed(self, scope: Scope, receive: Receive, send: Send, npz: bool) -> None:
        body = await self._read_body(receive, send)
        if body is None:
            return  # answered already (408, 413) or the client left
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.admit_threads)
        try:
            admission = await anyio.to_thread.run_sync(self.admit, body, npz, limiter=self._limiter)
        except Exception as err:
            if not hasattr(err, "status") or not hasattr(err, "body"):
                raise
            await _send_json(send, err.status, err.body(), err.headers)
            return
        del body
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_abandon_on_disconnect, receive, admission)
                await self.app(
                    scope,
                    _replay(admission.replay_body()),
                    _Swap(send, admission, self.retry_after_s),
                )
                tasks.cancel_scope.cancel()
        finally:
            admission.release()

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413 (too large), 408 (too slow) or a client
        that left."""
        chunks: list[bytes] = []
        seen = 0
        with anyio.move_on_after(self.read_timeout_s) as deadline:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    # The client left; the reply goes nowhere, but one must be sent: BentoML's
                    # timeout middleware waits for it (an hour, holding the task, and holding
                    # up every graceful shutdown) when an app returns without replying.
                    message = "body: the client closed the connection before sending it all"
                    await _send_json(send, 400, _error(message, ["body"]))
                    return None
                chunk = message.get("body", b"")
                seen += len(chunk)
                if seen > self.max_body_bytes:
                    await _send_json(send, 413, _error(self._too_large(seen), ["body"]))
                    return None
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        if deadline.cancelled_caught:
            message = (
                f"body: not received within {self.read_timeout_s:g} s (SCSTRATA_READ_TIMEOUT_S); "
                "a body shorter than its Content-Length, or a connection too slow"
            )
            await _send_json(send, 408, _error(message, ["body"]), {"connection": "close"})
        return None

    def _too_large(self, size: int) -> str:
        return (
            f"body: {size} bytes exceed this server's limit of {self.max_body_bytes} bytes; "
            "send fewer cells per request (the client's chunk_size) or raise SCSTRATA_MAX_BODY_MB"
        )

    def _counting(self, receive: Receive, send: Send) -> Receive:
        """Enforce the limit on bodies sent without a Content-Length (chunked)."""
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    await _send_json(send, 413, _error(self._too_large(seen), ["body"]))
                    return {"type": "http.disconnect"}
            return message

        return wrapped


async def _abandon_on_disconnect(receive: Receive, admission: Admission) -> None:
    """The body is read: the next message is the client leaving (or the reply being done)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    admission.abandon()


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await anyio.sleep_forever()  # BentoML has the body; the watcher sees disconnects
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class _Swap:
    """BentoML's reply to the tickets is a placeholder: send the admitted items' own reply,
    made off the event loop, instead. BentoML's own errors (e.g. its 503) pass through."""

    def __init__(self, send: Send, admission: Admission, retry_after_s: int):
        self.send, self.admission, self.retry_after_s = send, admission, retry_after_s
        self.swapped = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            reply = self.admission.reply()
            if reply is not None:
                self.swapped = True
                await _send_bytes(
                    self.send, reply.status, reply.content_type, reply.body, reply.headers
                )
                return
            if message["status"] == 503:
                extra = [(b"retry-after", str(self.retry_after_s).encode())]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
        elif message["type"] == "http.response.body" and self.swapped:
            return
        await self.send(message)
