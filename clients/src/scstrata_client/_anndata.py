"""Where embeddings go in an AnnData, and how their provenance is recorded."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._version import __version__

if TYPE_CHECKING:
    from anndata import AnnData

UNS_KEY = "scstrata"
OFFICIAL_POOLING = "official"

# h5ad stores obsm/uns entries as HDF5 paths, where "/" would open a sub-group; model names
# such as "tahoe-x1/70m" must not leak that into a key.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def obsm_key(
    model: str, layer: int, pooling: str = OFFICIAL_POOLING, key_added: str | None = None
) -> str:
    """``X_<model>_layer<k>`` (``<key_added>_layer<k>`` when given, as scanpy's
    ``key_added``), with ``_<pooling>`` appended for a non-default pooling."""
    key = f"{key_added or f'X_{model}'}_layer{int(layer)}"
    if pooling != OFFICIAL_POOLING:
        key = f"{key}_{pooling}"
    return _UNSAFE.sub("_", key)


def write_embeddings(
    adata: AnnData,
    layers: Mapping[int, np.ndarray],
    *,
    url: str,
    model: str,
    pooling: str,
    options: Mapping[str, Any] | None = None,
    n_layers: int | None = None,
    n_unmapped_genes: int | None = None,
    checkpoint_digest: str | None = None,
    key_added: str | None = None,
) -> list[str]:
    """Store each layer in ``adata.obsm`` and its provenance in ``adata.uns["scstrata"]``.

    Provenance values are strings and numbers only, so the AnnData stays writable as h5ad;
    ``options`` is stored as a JSON string for the same reason. Returns the obsm keys written.
    """
    for layer, array in layers.items():
        if array.shape[0] != adata.n_obs:
            raise ValueError(
                f"write_to: has {adata.n_obs} cells but layer {layer} has {array.shape[0]} rows"
            )
    provenance = adata.uns.get(UNS_KEY)
    if not isinstance(provenance, Mapping):
        provenance = {}
    provenance = dict(provenance)

    keys = []
    for layer, array in sorted(layers.items()):
        key = obsm_key(model, layer, pooling, key_added)
        adata.obsm[key] = array
        record: dict[str, Any] = {
            "url": url,
            "model": model,
            "layer": int(layer),
            "pooling": pooling,
            "dim": int(array.shape[1]),
            "options": json.dumps(dict(options or {}), sort_keys=True),
            "client_version": __version__,
        }
        if n_layers is not None:
            record["n_layers"] = int(n_layers)
            if n_layers > 0:
                record["depth"] = int(layer) / n_layers
        if n_unmapped_genes is not None:
            record["n_unmapped_genes"] = int(n_unmapped_genes)
        if checkpoint_digest:
            record["checkpoint_digest"] = str(checkpoint_digest)
        provenance[key] = record
        keys.append(key)
    adata.uns[UNS_KEY] = provenance
    return keys
