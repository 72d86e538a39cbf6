"""Layer sweeps: pull every layer's embedding from the service, score each, name the best."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .trajectory import reference_pseudotime, trajectory_scores

__all__ = [
    "SCORE_COLUMNS",
    "best_layer",
    "card_field",
    "model_card",
    "pull_layers",
    "score_layers",
]

#: Columns of the tidy score table, in order.
SCORE_COLUMNS = ["model", "layer", "depth", "metric", "value"]


def score_layers(
    layer_embeddings: Mapping[int, np.ndarray],
    adata: ad.AnnData,
    time_key: str,
    n_layers: int,
    model: str,
    *,
    n_neighbors: int = 30,
    progress: bool = True,
) -> pd.DataFrame:
    """Trajectory scores of every layer, as a tidy table.

    The reference pseudotime (:func:`~scstrata_scoring.trajectory.reference_pseudotime` of
    ``adata`` rooted by ``adata.obs[time_key]``) is computed once and shared by all layers.
    Rows of every embedding must be the cells of ``adata`` in obs order.

    Returns
    -------
    One row per (layer, metric) with columns ``model, layer, depth, metric, value``, where
    ``depth = layer / n_layers`` (0 = input embedding, 1 = last block), sorted by layer.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    embeddings = {int(k): np.asarray(v) for k, v in layer_embeddings.items()}
    # Check every layer before the (slow) reference, so a wrong input fails at once.
    for layer, embedding in embeddings.items():
        if embedding.ndim != 2 or embedding.shape[0] != adata.n_obs:
            raise ValueError(
                f"layer {layer}: embedding has shape {embedding.shape}, expected "
                f"({adata.n_obs}, dim) rows = cells of adata"
            )
    reference, root = reference_pseudotime(adata, time_key, n_neighbors=n_neighbors)
    time = adata.obs[time_key]
    rows = []
    for layer in tqdm(sorted(embeddings), desc=f"scoring {model}", disable=not progress):
        embedding = embeddings[layer]
        scores = trajectory_scores(embedding, reference, root, time=time, n_neighbors=n_neighbors)
        rows.extend(
            (model, layer, layer / n_layers, metric, value) for metric, value in scores.items()
        )
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def best_layer(
    df: pd.DataFrame, metric: str = "dpt_spearman", model: str | None = None
) -> dict[str, Any]:
    """The layer with the highest ``metric`` and its gain over the final layer.

    The final layer is the one at depth 1 (``layer == n_layers``); when the table has none, the
    deepest layer present stands in for it. Gains are ``best - final`` (``gain``) and
    ``100 * (best - final) / |final|`` (``gain_pct``, NaN when the final score is 0).
    ``model`` picks one model from a table holding several; ties go to the shallower layer.

    Returns
    -------
    ``{"model", "metric", "best_layer", "best_depth", "best_score", "final_layer",
    "final_score", "gain", "gain_pct"}``.
    """
    rows = df[df["metric"] == metric]
    models = rows["model"].unique()
    if model is None:
        if len(models) != 1:
            raise ValueError(f"table holds models {list(models)}; pass model=")
        model = str(models[0])
    rows = rows[(rows["model"] == model) & rows["value"].notna()]
    if rows.empty:
        raise ValueError(f"no {metric!r} scores for model {model!r}")
    rows = rows.sort_values("layer", kind="stable")
    # argmax returns the first maximum, so after sorting by layer ties go to the shallower one.
    best = rows.iloc[int(np.argmax(rows["value"].to_numpy()))]
    at_depth_one = rows[np.isclose(rows["depth"], 1.0)]
    final = at_depth_one.iloc[-1] if len(at_depth_one) else rows.iloc[-1]
    gain = float(best["value"] - final["value"])
    return {
        "model": model,
        "metric": metric,
        "best_layer": int(best["layer"]),
        "best_depth": float(best["depth"]),
        "best_score": float(best["value"]),
        "final_layer": int(final["layer"]),
        "final_score": float(final["value"]),
        "gain": gain,
        "gain_pct": 100.0 * gain / abs(final["value"]) if final["value"] != 0 else float("nan"),
    }


def card_field(card: Any, field: str) -> Any:
    """A model card's field, whether the card is a pydantic/dataclass object or a dict."""
    if isinstance(card, Mapping):
        return card[field]
    return getattr(card, field)


def model_card(url: str, model: str) -> Any:
    """The card of ``model`` from the service's ``GET /models``."""
    from scstrata_client import Client  # lazy: the client is optional for offline scoring

    cards = Client(url).models()
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
) -> dict[int, np.ndarray]:
    """Embeddings of ``adata``'s cells at ``layers`` of ``model``, via the service at ``url``.

    ``layers`` follows the service: an index, a list of indices (negatives count from the
    end) or ``"all"``. Returns ``{layer index 0..L: array (n_cells, dim)}``, rows in obs order.
    """
    from scstrata_client import Client  # lazy: the client is optional for offline scoring

    result = Client(url).embed(adata, model=model, layers=layers, pooling=pooling)
    # JSON object keys may survive as strings; the table wants integer layers.
    return {int(k): np.asarray(v) for k, v in result.items()}
