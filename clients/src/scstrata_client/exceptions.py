"""Exceptions raised by the client.

The hierarchy is deliberately short so that callers can catch at the level they care about:

    ScstrataError
    ├── TransportError          the service could not be reached (after retries)
    ├── ProtocolError           a reply that breaks the API contract
    └── ServiceError            a non-2xx reply
        ├── InvalidRequest      4xx: fix the request, retrying will not help
        │   └── Unauthorized    401/403: the token is missing, wrong or lacks access
        └── ServiceUnavailable  503/429 that persisted through every retry

Local argument problems (wrong shapes, missing genes) are plain ``ValueError``/``TypeError``
raised before anything is sent, as the standard library would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx


class ScstrataError(Exception):
    """Base class of every error raised by talking to the scstrata service."""


class TransportError(ScstrataError):
    """The request never got a reply: connection refused or reset, DNS failure, timeout.

    The underlying ``httpx`` exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, method: str | None = None, url: str | None = None):
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = url


class ProtocolError(ScstrataError):
    """The service replied 2xx, but the reply does not match the API contract.

    Typical causes: a client and service of different versions, or a proxy answering in
    place of the service. Never retried, because the same request would get the same reply.
    """


class ServiceError(ScstrataError):
    """The service answered with a non-2xx status.

    Attributes:
        status_code: the HTTP status.
        message: a readable message extracted from the error body (or its raw text).
        body: the decoded JSON body when there was one, else the raw text.
        method, url: the request that failed, when known.
        response: the ``httpx.Response``, when known (headers such as ``Retry-After``).
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        body: Any = None,
        *,
        method: str | None = None,
        url: str | None = None,
        response: httpx.Response | None = None,
    ):
        self.status_code = status_code
        self.message = message
        self.body = body
        self.method = method
        self.url = url
        self.response = response
        super().__init__(status_code, message, body)

    def __str__(self) -> str:
        where = f" from {self.method} {self.url}" if self.method and self.url else ""
        return f"HTTP {self.status_code}{where}: {self.message}"


class InvalidRequest(ServiceError):
    """A 4xx reply (other than 429): the request is wrong and the message says how to fix it."""


class Unauthorized(InvalidRequest):
    """A 401 or 403 reply: the service wants a (different) token.

    Pass ``token=`` to the client or set ``SCSTRATA_TOKEN``; it is sent as
    ``Authorization: Bearer <token>``.
    """

    def __str__(self) -> str:
        text = super().__str__()
        if "SCSTRATA_TOKEN" in text:  # the service's own message already says how
            return text
        return f"{text} (pass token= to the client or set SCSTRATA_TOKEN)"


class ServiceUnavailable(ServiceError):
    """A 503 or 429 reply that persisted through every retry: the service is overloaded."""


class UnmappedGenesWarning(UserWarning):
    """Some genes of a request are not in the model's vocabulary; their counts were dropped."""
