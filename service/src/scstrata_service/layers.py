"""The one layer convention shared by every backend (docs/design.md §2), resolved once.

A model with ``L`` blocks has layers ``0..L``: 0 is the input embedding, ``k`` the output of
block ``k``, and ``L`` the last block including the final norm the official embedding code
applies (request option ``final_norm: false`` leaves it out). Negative indices count from the
end (-1 == L); ``"all"`` is ``0..L``.

A request is resolved here, once, into a :class:`Readout`; everything after (engine, runtime,
poolers) takes the resolved object and checks nothing again. The client package has its own
copy of :func:`resolve_layers` (it cannot import the service); tests/service/test_layer_rule.py
holds both to the same answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from scstrata_service.contract import ModelCard

LayerSpec = int | Sequence[int] | Literal["all"]


class LayerError(ValueError):
    """A layer (or pooling) request that does not fit the model."""


def resolve_layers(spec: LayerSpec, n_layers: int) -> list[int]:
    """Turn a layer request into sorted, unique indices in ``0..n_layers``."""
    if isinstance(spec, str):
        if spec != "all":
            raise LayerError(
                f'layers: expected an integer, a list of integers or "all", got {spec!r}'
            )
        return list(range(n_layers + 1))
    requested = [spec] if isinstance(spec, int) else list(spec)
    if not requested:
        raise LayerError('layers: the list is empty; ask for at least one layer or "all"')
    resolved = set()
    for k in requested:
        if isinstance(k, bool) or not isinstance(k, int):
            raise LayerError(f"layers: {k!r} is not an integer layer index")
        if not -(n_layers + 1) <= k <= n_layers:
            raise LayerError(
                f"layers: layer {k} is out of range 0..{n_layers} "
                f"(or {-(n_layers + 1)}..-1 from the end) for a model with {n_layers} blocks"
            )
        resolved.add(k % (n_layers + 1))
    return sorted(resolved)


def check_pooling(pooling: str, card: ModelCard) -> str:
    if pooling not in card.poolings:
        raise LayerError(
            f"pooling: {pooling!r} is not offered by '{card.name}'; "
            f"choose from {sorted(card.poolings)}"
        )
    return pooling


@dataclass(frozen=True)
class Readout:
    """What one forward pass reads out, resolved against a model's card: ``layers`` sorted
    and unique in ``0..L``, each of ``poolings`` offered by the model, and whether layer L
    includes the family's final norm."""

    layers: tuple[int, ...]
    poolings: tuple[str, ...]
    final_norm: bool = True

    @property
    def last(self) -> int:
        """The deepest layer: blocks after it never run (early exit)."""
        return self.layers[-1]

    @classmethod
    def resolve(
        cls,
        card: ModelCard,
        layers: LayerSpec,
        poolings: str | Iterable[str],
        final_norm: bool = True,
    ) -> Readout:
        """Raises :class:`LayerError` (a ``ValueError``) naming the field and the choices."""
        names = [poolings] if isinstance(poolings, str) else list(poolings)
        if not names:
            raise LayerError("pooling: name at least one pooling")
        for name in names:
            check_pooling(name, card)
        return cls(
            tuple(resolve_layers(layers, card.n_layers)), tuple(sorted(set(names))), final_norm
        )

    @classmethod
    def merge(cls, readouts: Iterable[Readout]) -> Readout:
        """One pass serving all of ``readouts`` (which must agree on ``final_norm``)."""
        readouts = list(readouts)
        norms = {r.final_norm for r in readouts}
        if len(norms) != 1:
            raise ValueError("readouts with and without the final norm need separate passes")
        return cls(
            tuple(sorted({k for r in readouts for k in r.layers})),
            tuple(sorted({p for r in readouts for p in r.poolings})),
            norms.pop(),
        )
