"""The requested layers of one packed pass, each pooled every requested way (all families).

An encoder yields ``(k, states)`` for layers ``k = 0..last`` (layers.py numbers them) and runs
no block after ``last``: early exit. Only the pooled vectors are kept, never every hidden state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

# (poolings, states [tokens, dim]) -> {pooling: [cells, dim]}
PoolFn = Callable[[Sequence[str], torch.Tensor], dict[str, torch.Tensor]]


def pool_layers(
    states: Iterable[tuple[int, torch.Tensor]],
    layers: Sequence[int],
    poolings: Sequence[str],
    pool: PoolFn,
) -> dict[str, dict[int, torch.Tensor]]:
    """``{pooling: {layer: vectors}}`` for every requested layer, from ``states``."""
    wanted = set(layers)
    out: dict[str, dict[int, torch.Tensor]] = {p: {} for p in poolings}
    for k, x in states:
        if k in wanted:
            for pooling, vectors in pool(poolings, x).items():
                out[pooling][k] = vectors
    return out
