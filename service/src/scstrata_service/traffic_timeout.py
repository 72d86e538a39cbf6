"""BentoML's request timeout without a timer left behind by every request.

BentoML (1.4.40) enforces ``traffic.timeout`` with ``TimeoutMiddleware``: per request it
schedules a timer on the event loop for the full timeout and never cancels it, also when the
reply was sent long before. The timer keeps a copy of the request's context variables (its
OpenTelemetry span, BentoML's request context) until it fires, so with ``timeout: 3600`` every
request kept ~6 KiB of objects for an hour after its reply: the server grew ~13 KiB of RSS
per request more than with this module (bench/server_rss.py, bench/RESULTS.md) and could
level off only after an hour's requests.

The call installed here keeps BentoML's behaviour (a 504 when no reply has started within the
timeout, after which the request's task is cancelled) but waits with ``asyncio.wait``, which
drops its timer when it returns. It relies on BentoML's module name for the class (bentoml is
pinned in service/pyproject.toml); tests/service/test_traffic_timeout.py fails if it is gone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.responses import JSONResponse

log = logging.getLogger(__name__)


def cancel_request_timers() -> bool:
    """Have BentoML build its timeout middleware with :func:`wait_for_reply` as its call.

    Call before the service's ASGI app is built (at import of the service module). Returns
    whether it took effect.
    """
    try:
        from bentoml._internal.server.http import traffic
    except ImportError as err:
        log.warning("BentoML internals moved (%s): each request's timer outlives it", err)
        return False
    original = getattr(traffic, "TimeoutMiddleware", None)
    if not isinstance(original, type):
        log.warning("BentoML has no TimeoutMiddleware: each request's timer may outlive it")
        return False
    if vars(original).get("__call__") is not wait_for_reply:

        class ReleasingTimeout(original):
            __call__ = wait_for_reply

        traffic.TimeoutMiddleware = ReleasingTimeout
    return True


async def wait_for_reply(self: Any, scope: dict, receive: Any, send: Any) -> None:
    """BentoML's ``TimeoutMiddleware.__call__`` (``self.app``, ``self.timeout``), timer dropped."""
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    started = asyncio.get_running_loop().create_future()

    async def send_and_mark(message: Any) -> None:
        if not started.done():
            started.set_result(None)
        await send(message)

    task = asyncio.ensure_future(self.app(scope, receive, send_and_mark))
    # Ends when the reply starts, the request's task ends (an error re-raises below) or the
    # timeout passes; asyncio.wait cancels its own timer when it returns
    await asyncio.wait({started, task}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
    if not started.done() and not task.done() and task.cancel():
        message = f"Not able to process the request in {self.timeout} seconds"
        await JSONResponse({"error": message}, status_code=504)(scope, receive, send)
        return
    await task
