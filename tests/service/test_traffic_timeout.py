"""The request timeout leaves no timer on the event loop once a request has its reply."""

from __future__ import annotations

import asyncio

from bentoml._internal.server.http import traffic

from scstrata_service.traffic_timeout import cancel_request_timers, wait_for_reply

# BentoML's own class, also when the service module has installed the subclass already
ORIGINAL = next(c for c in traffic.TimeoutMiddleware.__mro__ if c.__module__ == traffic.__name__)


async def reply_ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def never_reply(scope, receive, send):
    await asyncio.sleep(60)


async def serve(middleware_cls, app, n_requests: int, timeout: float = 3600):
    """Statuses sent, and the timers left on the loop, after ``n_requests`` one by one."""
    loop = asyncio.get_running_loop()
    middleware = middleware_cls(app, timeout=timeout)
    statuses = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    before = len(loop._scheduled)
    for _ in range(n_requests):
        await middleware({"type": "http"}, receive, send)
    return statuses, len(loop._scheduled) - before


def test_installed_in_bentoml():
    assert cancel_request_timers()
    assert traffic.TimeoutMiddleware.__call__ is wait_for_reply
    assert issubclass(traffic.TimeoutMiddleware, ORIGINAL)
    assert cancel_request_timers()  # twice: still one subclass deep
    assert traffic.TimeoutMiddleware.__mro__[1] is ORIGINAL


def test_no_timer_left_per_request():
    cancel_request_timers()
    statuses, timers = asyncio.run(serve(traffic.TimeoutMiddleware, reply_ok, 300))
    assert statuses == [200] * 300
    assert timers == 0
    # BentoML's own middleware leaves one per request (the growth this module removes)
    statuses, timers = asyncio.run(serve(ORIGINAL, reply_ok, 300))
    assert statuses == [200] * 300 and timers == 300


def test_timeout_still_answers_504():
    cancel_request_timers()
    statuses, _ = asyncio.run(serve(traffic.TimeoutMiddleware, never_reply, 2, timeout=0.05))
    assert statuses == [504, 504]
