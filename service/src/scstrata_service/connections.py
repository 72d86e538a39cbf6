"""Connections: a cap below the worker's file limit, and a deadline for each request head.

uvicorn keeps a connection (one file descriptor) open as long as its client does and waits for
a request head without a time limit, so connections that never finish their headers pile up
until the worker's file limit is reached and nothing else can connect (slow-loris: 1,100 of
them stopped a worker whose limit is 1,024). uvicorn's own ``limit_concurrency`` only answers
503 once a head has arrived, and BentoML builds uvicorn's Config itself without passing it or a
protocol; so each worker names this protocol as uvicorn's "auto" HTTP protocol before uvicorn
loads its Config (:func:`install`).

- A connection that takes the worker past its cap closes the connection that has waited longest
  for a request head (an idle keep-alive one, or a slow one); when every connection has a
  request in flight the new one is answered 503 and closed.
- A request head must arrive within the head timeout of the connection opening or of the
  previous reply: a partial head then gets 408, a silent connection is closed.

Bodies have their own timeout, in the middleware (``SCSTRATA_READ_TIMEOUT_S``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from scstrata_service.settings import Settings

log = logging.getLogger(__name__)


def connection_cap(configured: int | None, backlog: int) -> int:
    """The most connections one worker holds: ``configured`` (SCSTRATA_MAX_CONNECTIONS) or
    what its file limit leaves, whichever is lower.

    Left aside: three times the listen ``backlog`` (asyncio accepts up to that many connections
    in one pass of its loop, and makes a pass or two more before the first of them can be
    closed: a burst of 1,024 connections with a backlog of 96 took a worker capped at 64 to
    241 files), and 64 for what else the worker opens (a started one holds ~15: models, logs,
    pipes to the parsing processes; more while uploads are read)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    below_limit = max(16, soft - 3 * backlog - 64)
    return min(configured, below_limit) if configured else below_limit


def _raw_reply(status: int, phrase: str, message: str, kind: str, headers: dict) -> bytes:
    """A whole HTTP/1.1 reply with the error body of docs/api.md; the connection then closes."""
    body = json.dumps(
        {"error": message, "detail": [{"loc": ["connection"], "msg": message, "type": kind}]}
    ).encode()
    lines = [f"HTTP/1.1 {status} {phrase}", "content-type: application/json"]
    lines += [f"content-length: {len(body)}", "connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class GuardedProtocol(AutoHTTPProtocol):
    """uvicorn's HTTP protocol with the cap and the head timeout above (set by install)."""

    max_connections = 65_536
    head_timeout_s = 10.0
    retry_after_s = 5

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._over_cap():
            return
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        self._check_head()

    def on_response_complete(self) -> None:
        self._await_head()  # before: uvicorn may start a pipelined request in there
        super().on_response_complete()
        if self.transport.is_closing():
            self._stop_waiting()
        else:
            self._check_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    # --- the head timeout ---------------------------------------------------------------

    def _await_head(self) -> None:
        self._stop_waiting()
        self._head_bytes = 0
        self._waiting_since = time.monotonic()
        self._cycle_before = self.cycle  # uvicorn starts a new cycle once a head is in
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_late)

    def _check_head(self) -> None:
        if self._head_timer is not None and self.cycle is not self._cycle_before:
            self._stop_waiting()

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        """No whole request head in time: 408 to a partial one, silence closes quietly."""
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes:
            message = (
                f"headers: not received within {self.head_timeout_s:g} s "
                "(SCSTRATA_HEADER_TIMEOUT_S); the connection is closed"
            )
            self.transport.write(_raw_reply(408, "Request Timeout", message, "error", {}))
        self.transport.close()

    # --- the cap ------------------------------------------------------------------------

    def _over_cap(self) -> bool:
        """Make room for this connection; False when it was refused (503) instead."""
        open_ = [c for c in self.connections if not c.transport.is_closing()]
        if len(open_) <= self.max_connections:
            return True  # the others over the cap are closing already
        waiting = [c for c in open_ if getattr(c, "_head_timer", None) is not None]
        if waiting:
            min(waiting, key=lambda c: c._waiting_since)._head_late()
            return True
        message = (
            f"busy: this worker holds {self.max_connections} connections with requests in "
            "flight (SCSTRATA_MAX_CONNECTIONS); retry after the Retry-After seconds"
        )
        log.warning("connection refused: %d connections, all busy", len(open_) - 1)
        headers = {"retry-after": str(self.retry_after_s)}
        self.transport.write(_raw_reply(503, "Service Unavailable", message, "busy", headers))
        self.transport.close()
        return False


def install(settings: Settings) -> int:
    """In a BentoML worker, before uvicorn loads its Config: serve with GuardedProtocol.
    Returns the cap."""
    import uvicorn.config

    GuardedProtocol.max_connections = connection_cap(settings.max_connections, settings.backlog)
    GuardedProtocol.head_timeout_s = settings.header_timeout_s
    GuardedProtocol.retry_after_s = settings.retry_after_s
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:GuardedProtocol"
    return GuardedProtocol.max_connections
