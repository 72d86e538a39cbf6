"""The two scoring recipes: scstrata's own (the default) and the layer study's published one.

``--recipe study`` reproduces what the layer study (github vincenzocivale/scfm-mid-layer-analysis,
the versions that wrote its result CSVs) did; ``--recipe scstrata`` is this package's method.
They differ in seven places (``scoring/README.md`` has the table, with the reason for each
default):

* per-layer embedding: study = scFoundation's S token / Tahoe's CLS token after each block,
  the last block *without* the final norm; scstrata = the card's default pooling, layer L
  with the final norm.
* layer numbering: study ``X_layer_i`` = block ``i + 1``; scstrata layer k = block k, 0 =
  the input embedding.
* DPT, cells unreachable from the root: study = left out of the correlation; scstrata =
  ranked tied last.
* genes before the HVG selection: study = every gene of the file; scstrata = undetected
  genes dropped.
* perturbation profiles: study = mean shifts of the file's ``raw`` / ``X`` (raw counts in
  its data); scstrata = of log-normalised expression.
* profile similarity: study = cosine of uncentred average ranks (called Spearman there);
  scstrata = Spearman's rho.
* neighbourhood overlap: study = scanpy's 29 stored neighbours padded with cell 0 to 30,
  divided by 30; scstrata = the exact 30 nearest other cells.

This module holds what the study recipe needs beyond a switch in a formula: which request
gives its embeddings (:func:`service_request`), its layer numbers (:func:`study_layer_number`)
and its padded neighbour tables (:func:`padded_neighbours`, :func:`padded_overlap_per_cell`).
The switches themselves live in :mod:`.trajectory` and :mod:`.perturbation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .pull import card_field, card_get

__all__ = [
    "RECIPES",
    "STUDY_POOLING",
    "STUDY_T_EPS",
    "Recipe",
    "ServiceRequest",
    "check_recipe",
    "padded_neighbours",
    "padded_overlap_per_cell",
    "service_request",
    "study_layer_number",
]

Recipe = Literal["scstrata", "study"]

#: The recipes, default first.
RECIPES: tuple[str, ...] = ("scstrata", "study")

#: The study's per-layer token, by model family: scFoundation's S token (the last appended
#: token), Tahoe-X1's CLS token (position 0), both read from a block's output.
STUDY_POOLING = {"scfoundation": "S", "tahoe": "cls"}

#: The study ranked genes by |mean difference| / (sqrt(var_p / n_p + var_c / n_c) + 1e-8).
STUDY_T_EPS = 1e-8


def check_recipe(recipe: str) -> Recipe:
    """``recipe`` if it is one of :data:`RECIPES`, else a ValueError naming them."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}; got {recipe!r}")
    return recipe  # type: ignore[return-value]


@dataclass(frozen=True)
class ServiceRequest:
    """What to ask the service for: the pooling, the request options and the layers."""

    pooling: str
    layers: int | list[int] | str
    options: dict[str, Any] = field(default_factory=dict)


def service_request(
    card: Any,
    recipe: Recipe,
    pooling: str | None = None,
    layers: int | Sequence[int] | str = "all",
) -> ServiceRequest:
    """The request that gives ``recipe``'s embeddings of the model described by ``card``.

    * ``scstrata``: ``pooling`` (default: the card's ``default_pooling``), ``layers`` as given.
    * ``study``: ``pooling`` (default: :data:`STUDY_POOLING` of the card's family); every
      block's own output, so ``{"final_norm": False}`` when the card says the family applies a
      final norm to layer L; ``"all"`` layers means blocks ``1..L`` (the study never scored the
      input embedding, and has no number for it).

    Raises ValueError when the study recipe cannot be served: a family without a study token
    and no ``pooling`` given, a card without the ``final_norm`` field (a service that cannot
    leave the final norm out), or layer 0 asked for.
    """
    n_layers = int(card_field(card, "n_layers"))
    if recipe == "scstrata":
        chosen = pooling or str(card_get(card, "default_pooling") or "official")
        return ServiceRequest(chosen, _as_layers(layers))
    check_recipe(recipe)
    family = str(card_field(card, "family"))
    if pooling is None:
        if family not in STUDY_POOLING:
            raise ValueError(
                f"--recipe study: the study read a token only for {sorted(STUDY_POOLING)}, not "
                f"{family!r}; pass --pooling to choose one"
            )
        pooling = STUDY_POOLING[family]
    final_norm = card_get(card, "final_norm")
    if final_norm is None:
        raise ValueError(
            f"--recipe study: the model card of {card_field(card, 'name')!r} has no "
            "'final_norm' field, so this service cannot give block L without its final norm "
            "(the study's last layer); update the service or use --recipe scstrata"
        )
    options = {"final_norm": False} if final_norm else {}
    if layers == "all":
        chosen_layers: int | list[int] | str = list(range(1, n_layers + 1))
    else:
        chosen_layers = _as_layers(layers)
        listed = [chosen_layers] if isinstance(chosen_layers, int) else list(chosen_layers)
        if 0 in listed:
            raise ValueError(
                "--recipe study: layer 0 (the input embedding) has no number in the study, "
                "which scored blocks 1..L only; leave it out"
            )
    return ServiceRequest(pooling, chosen_layers, options)


def study_layer_number(layer: int) -> int:
    """The study's number of scstrata layer ``layer``: ``X_layer_i`` is block ``i + 1``."""
    if layer < 1:
        raise ValueError(f"layer {layer} is not a block; the study numbered blocks 1..L as 0..L-1")
    return int(layer) - 1


def padded_neighbours(stored: np.ndarray, k: int) -> np.ndarray:
    """The study's neighbour table: ``(n, k)`` ints from the neighbours a graph stores.

    ``stored`` holds, per cell, the nearest other cells a scanpy graph keeps (built with
    ``n_neighbors = k`` it keeps ``k - 1``: the cell itself counts as one). The study read
    them into ``k`` slots and left cell 0 in every slot left over, so its overlap counts cell
    0 as a shared neighbour of every cell.
    """
    stored = np.asarray(stored, dtype=np.int64)
    table = np.zeros((stored.shape[0], k), dtype=np.int64)
    width = min(stored.shape[1], k)
    table[:, :width] = stored[:, :width]
    return table


def padded_overlap_per_cell(layer: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Per cell: distinct entries shared by the two padded tables' rows, divided by ``k``.

    With tables from :func:`padded_neighbours` this is the study's ``Neighborhood_Overlap``
    per cell: ``|({0} ∪ N_layer(i)) ∩ ({0} ∪ N_ref(i))| / k`` with the ``k - 1`` stored
    neighbours, about ``1 / k`` above the overlap of the exact ``k`` nearest neighbours.
    """
    if layer.shape != reference.shape:
        raise ValueError(f"neighbour tables differ in shape: {layer.shape} vs {reference.shape}")
    shared = [np.intersect1d(a, b).size for a, b in zip(layer, reference)]
    return np.asarray(shared, dtype=np.float64) / float(k)


def _as_layers(layers: int | Sequence[int] | str) -> int | list[int] | str:
    if isinstance(layers, str | int):
        return layers
    return [int(k) for k in layers]
