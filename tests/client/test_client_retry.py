from datetime import datetime, timedelta, timezone

import httpx
import pytest

from scstrata_client import ServiceUnavailable, TransportError
from scstrata_client._retry import (
    MAX_BACKOFF_S,
    MAX_RETRY_AFTER_S,
    RetryPolicy,
    RetryState,
    backoff_delay,
    parse_retry_after,
)


def test_backoff_doubles_at_each_retry_without_jitter():
    delays = [backoff_delay(n, 0.5, jitter=0.0) for n in range(4)]
    assert delays == [0.5, 1.0, 2.0, 4.0]


def test_jitter_adds_up_to_one_step():
    assert backoff_delay(2, 0.5, jitter=0.5) == pytest.approx(2.0 + 1.0)
    assert 2.0 <= backoff_delay(2, 0.5) < 4.0


def test_backoff_step_is_capped():
    assert backoff_delay(30, 0.5, jitter=0.0) == MAX_BACKOFF_S


def test_retry_after_longer_than_the_step_is_waited_in_full():
    assert backoff_delay(0, 0.5, retry_after=7.0, jitter=0.0) == 7.0
    assert backoff_delay(0, 0.5, retry_after=7.0, jitter=0.5) == pytest.approx(7.25)


def test_retry_after_shorter_than_the_step_does_not_shorten_it():
    assert backoff_delay(3, 0.5, retry_after=1.0, jitter=0.0) == 4.0


def test_absurd_retry_after_is_capped():
    assert backoff_delay(0, 0.5, retry_after=86400.0, jitter=0.0) == MAX_RETRY_AFTER_S


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, None), ("3", 3.0), (" 2.5 ", 2.5), ("-4", 0.0), ("soon", None), ("nan", None)],
)
def test_retry_after_seconds_are_parsed(header, seconds):
    assert parse_retry_after(header) == seconds


def test_retry_after_http_date_is_seconds_from_now():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    header = "Wed, 01 Jan 2025 12:00:10 GMT"
    assert parse_retry_after(header, now=now) == pytest.approx(10.0)
    assert parse_retry_after(header, now=now + timedelta(minutes=1)) == 0.0


def _unavailable(retry_after=None):
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    response = httpx.Response(503, headers=headers)
    return ServiceUnavailable(503, "overloaded", None, response=response)


def test_retry_state_honours_retry_after_of_a_503():
    state = RetryState(RetryPolicy(max_retries=2, backoff=0.1), jitter=lambda: 0.0)
    assert state.failed(_unavailable("5"), "POST", "u") == 5.0
    assert state.failed(_unavailable(), "POST", "u") == pytest.approx(0.2)


def test_retry_state_reraises_the_503_once_retries_are_spent():
    state = RetryState(RetryPolicy(max_retries=1, backoff=0.0))
    state.failed(_unavailable(), "POST", "u")
    last = _unavailable()
    with pytest.raises(ServiceUnavailable) as info:
        state.failed(last, "POST", "u")
    assert info.value is last


def test_retry_state_turns_a_spent_connection_error_into_transport_error():
    state = RetryState(RetryPolicy(max_retries=0))
    cause = httpx.ConnectError("connection refused")
    with pytest.raises(TransportError, match="after 1 attempt") as info:
        state.failed(cause, "GET", "http://svc/models")
    assert info.value.__cause__ is cause
    assert info.value.url == "http://svc/models"


def test_negative_retry_settings_are_rejected():
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(backoff=-0.1)


def test_a_429_with_retry_after_is_retried_after_that_long():
    from scstrata_client._protocol import decode_reply

    reply = httpx.Response(
        429,
        json={"error": "authorization: too many wrong tokens"},
        headers={"Retry-After": "7"},
        request=httpx.Request("GET", "http://svc/models"),
    )
    with pytest.raises(ServiceUnavailable) as info:
        decode_reply(reply)
    state = RetryState(RetryPolicy(max_retries=3, backoff=0.1), jitter=lambda: 0.0)
    assert state.failed(info.value, "GET", "http://svc/models") == 7.0


def test_the_default_retries_outlast_a_service_restart():
    import inspect

    from scstrata_client import AsyncClient, Client
    from scstrata_client._retry import DEFAULT_MAX_RETRIES, retry_window_s

    assert retry_window_s(RetryPolicy()) >= 90  # a restart with model loading: ~30-60 s
    for cls in (Client, AsyncClient):
        default = inspect.signature(cls).parameters["max_retries"].default
        assert default == DEFAULT_MAX_RETRIES == RetryPolicy().max_retries
