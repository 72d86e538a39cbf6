"""scstrata-client: per-layer cell embeddings from an scstrata service.

Usage::

    from scstrata_client import Client

    with Client("http://localhost:3000") as client:
        layers = client.embed(adata, model="scfoundation", write_to=adata)
"""

from ._client import Client
from ._version import __version__
from .exceptions import (
    InvalidRequest,
    ProtocolError,
    ScstrataError,
    ServiceError,
    ServiceUnavailable,
    TransportError,
)
from .models import ModelCard

__all__ = [
    "Client",
    "InvalidRequest",
    "ModelCard",
    "ProtocolError",
    "ScstrataError",
    "ServiceError",
    "ServiceUnavailable",
    "TransportError",
    "__version__",
]
