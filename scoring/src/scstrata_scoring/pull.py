"""Pull per-layer embeddings from the scstrata service through the client (and its cache)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

__all__ = ["card_field", "card_get", "model_card", "pull_layers"]

logger = logging.getLogger(__name__)


def card_field(card: Any, field: str) -> Any:
    """A model card's field, whether the card is a pydantic/dataclass object or a dict."""
    if isinstance(card, Mapping):
        return card[field]
    return getattr(card, field)


def card_get(card: Any, field: str) -> Any:
    """Like :func:`card_field`, but None for a field the card lacks (also among its extras)."""
    try:
        return card_field(card, field)
    except (KeyError, AttributeError):
        extra = getattr(card, "model_extra", None) or {}
        return extra.get(field)


def model_card(url: str, model: str) -> Any:
    """The card of ``model`` from the service's ``GET /models``."""
    from scstrata_client import Client  # lazy: the client is optional for offline scoring

    with Client(url) as client:
        cards = client.models()
    for card in cards:
        if card_field(card, "name") == model:
            return card
    names = [card_field(c, "name") for c in cards]
    raise ValueError(f"model {model!r} is not served at {url}; served models: {names}")


def pull_layers(
    url: str,
    model: str,
    adata: ad.AnnData,
    layers: int | Sequence[int] | str = "all",
    pooling: str = "official",
    *,
    options: Mapping[str, Any] | None = None,
    genes: Sequence[str] | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[int, np.ndarray]:
    """Embeddings of ``adata``'s cells at ``layers`` of ``model``, via the service at ``url``.

    ``layers`` follows the service: an index, a list of indices (negatives count from the
    end) or ``"all"``. ``options`` are the request's model options (e.g.
    ``{"final_norm": False}``) and ``genes`` the gene names of ``adata``'s columns (default
    ``var_names``). Returns ``{layer index 0..L: array (n_cells, dim)}``, rows in obs order.

    Caching is the client's: each chunk's result is kept on disk under ``cache_dir`` (default
    ``$SCSTRATA_CACHE_DIR`` or ``~/.cache/scstrata``), keyed by the chunk's data, the model
    card, the layer and the pooling, so a rerun or an interrupted sweep does not recompute.
    """
    from scstrata_client import Client  # lazy: the client is optional for offline scoring

    with Client(url, cache=cache, cache_dir=cache_dir) as client:
        result = client.embed(
            adata,
            None if genes is None else list(genes),
            model=model,
            layers=layers,
            pooling=pooling,
            options=options,
        )
    return {int(k): np.asarray(v) for k, v in result.items()}
