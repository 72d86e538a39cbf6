"""scstrata-client: per-layer cell embeddings from an scstrata service.

Usage::

    from scstrata_client import Client

    with Client("http://localhost:3000") as client:
        layers = client.embed(adata, model="scfoundation", write_to=adata)
        last = client.layer(adata, "scfoundation", -1)
        for k, array in client.sweep(adata, "scfoundation", layers="all"):
            ...

``AsyncClient`` offers the same methods for asyncio code.
"""

from ._anndata import obsm_key
from ._async_client import AsyncClient
from ._cache import ChunkCache
from ._client import Client
from ._version import __version__
from .exceptions import (
    InvalidRequest,
    ProtocolError,
    ScstrataError,
    ServiceError,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
    UnmappedGenesWarning,
)
from .models import ModelCard

__all__ = [
    "AsyncClient",
    "ChunkCache",
    "Client",
    "InvalidRequest",
    "ModelCard",
    "ProtocolError",
    "ScstrataError",
    "ServiceError",
    "ServiceUnavailable",
    "TransportError",
    "Unauthorized",
    "UnmappedGenesWarning",
    "__version__",
    "obsm_key",
]
