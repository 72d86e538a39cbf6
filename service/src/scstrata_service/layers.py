"""The one layer convention shared by every backend (docs/design.md §2).

A model with ``L`` blocks has layers ``0..L``: 0 is the input embedding, ``k`` the output of
block ``k``, and ``L`` the last block including the final norm the official embedding code
applies. Negative indices count from the end (-1 == L); ``"all"`` is ``0..L``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

LayerSpec = int | Sequence[int] | Literal["all"]


class LayerError(ValueError):
    """A layer request that does not fit the model."""


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
