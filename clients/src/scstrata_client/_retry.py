"""When to retry and how long to wait: pure logic shared by the sync and async clients.

A transport loop (sync or async) is::

    retry = RetryState(policy)
    while True:
        try:
            return decode_reply(send())
        except RETRYABLE_ERRORS as exc:
            delay = retry.failed(exc, method, url)   # raises once the tries are spent
        sleep(delay)
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx

from .exceptions import ServiceUnavailable, TransportError

# Failures where the same request may well succeed a moment later. Deliberately not all of
# httpx.TransportError: an unsupported URL scheme or a malformed request never heals.
RETRYABLE_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,  # the server closed the connection mid-reply
)
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (*RETRYABLE_TRANSPORT_ERRORS, ServiceUnavailable)

# Cap on the exponential step, so that late retries do not wait for minutes.
MAX_BACKOFF_S = 30.0
# Retry-After is the service's own estimate and is honoured, but a broken proxy sending a
# huge value would otherwise look like a hang.
MAX_RETRY_AFTER_S = 120.0


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Returns None when the header is absent or unreadable, and never a negative number.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        now = now or datetime.now(timezone.utc)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def backoff_delay(
    attempt: int,
    backoff: float,
    *,
    retry_after: float | None = None,
    jitter: float | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    The step is ``backoff * 2**attempt`` (at most ``MAX_BACKOFF_S``). A ``Retry-After`` raises
    it to at least that many seconds (at most ``MAX_RETRY_AFTER_S``). On top comes a random
    ``jitter * step`` with ``jitter`` in [0, 1), so that many clients refused at the same
    moment do not all come back at the same moment.
    """
    if attempt < 0:
        raise ValueError(f"attempt: must be non-negative, got {attempt}")
    if backoff < 0:
        raise ValueError(f"backoff: must be non-negative, got {backoff}")
    step = min(MAX_BACKOFF_S, backoff * 2.0**attempt)
    if jitter is None:
        jitter = random.random()
    base = step
    if retry_after is not None:
        base = max(step, min(retry_after, MAX_RETRY_AFTER_S))
    return base + jitter * step


# Retries of the default policy: 0.5 + 1 + 2 + ... + 30 + 30 s = at least 91.5 s of waiting
# (up to twice that with jitter), longer than the service takes to restart and load its models
# (five retries waited 15.5-31 s, less than a restart).
DEFAULT_MAX_RETRIES = 8
DEFAULT_BACKOFF_S = 0.5


def retry_window_s(policy: RetryPolicy) -> float:
    """The least total wait of ``policy``'s retries (no jitter, no Retry-After)."""
    return sum(backoff_delay(i, policy.backoff, jitter=0.0) for i in range(policy.max_retries))


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff: float = DEFAULT_BACKOFF_S

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries: must be non-negative, got {self.max_retries}")
        if self.backoff < 0:
            raise ValueError(f"backoff: must be non-negative, got {self.backoff}")


@dataclass
class RetryState:
    """Counts the failures of one logical request and decides what happens next."""

    policy: RetryPolicy
    jitter: Callable[[], float] = random.random
    retries: int = field(default=0, init=False)

    def failed(self, exc: Exception, method: str, url: str) -> float:
        """Record a retryable failure; return the delay, or raise when no tries are left.

        httpx errors are raised as ``TransportError`` (the original chained as its cause);
        a ``ServiceUnavailable`` is raised as it is, since it already carries the reply.
        """
        attempts = self.retries + 1
        if self.retries >= self.policy.max_retries:
            if isinstance(exc, ServiceUnavailable):
                raise exc
            raise transport_error(exc, method, url, attempts) from exc
        retry_after = None
        if isinstance(exc, ServiceUnavailable) and exc.response is not None:
            retry_after = parse_retry_after(exc.response.headers.get("Retry-After"))
        delay = backoff_delay(
            self.retries, self.policy.backoff, retry_after=retry_after, jitter=self.jitter()
        )
        self.retries += 1
        return delay


def transport_error(exc: Exception, method: str, url: str, attempts: int = 1) -> TransportError:
    """Our ``TransportError`` for an httpx failure; the caller chains ``exc`` as the cause."""
    return TransportError(
        f"{method} {url} failed after {attempts} attempt(s): {type(exc).__name__}: {exc}",
        method=method,
        url=url,
    )
