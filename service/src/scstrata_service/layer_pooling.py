"""The layers of one packed pass, and each requested one pooled every requested way (all
families).

An encoder yields ``(k, states)`` for layers ``k = 0..last`` (layers.py numbers them) and runs
no block after ``last``: early exit. Only the pooled vectors are kept, never every hidden state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from scstrata_service.packing import PackedLayout, compiled

# (poolings, states [tokens, dim]) -> {pooling: [cells, dim]}
PoolFn = Callable[[Sequence[str], torch.Tensor], dict[str, torch.Tensor]]


# (block, states [tokens, dim], layout, attention kernel) -> states after the block
BlockFn = Callable[[torch.nn.Module, torch.Tensor, PackedLayout, str], torch.Tensor]


def block_states(
    embedded: torch.Tensor,
    blocks: Sequence[torch.nn.Module],
    block_forward: BlockFn,
    layout: PackedLayout,
    last: int,
    attention: str,
    *,
    compile_blocks: bool,
    compute_dtype: torch.dtype,
    final_norm: torch.nn.Module | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(k, states)`` for k = 0..last: layer 0 is ``embedded`` as it is (fp32), then each
    block's output in ``compute_dtype``, with ``final_norm`` (if the model has one) on layer
    ``len(blocks)``. Blocks after ``last`` never run; under ``compile_blocks`` one compiled
    graph serves every block."""
    yield 0, embedded
    x = embedded.to(compute_dtype)
    step = compiled(block_forward) if compile_blocks else block_forward
    for k in range(1, last + 1):
        x = step(blocks[k - 1], x, layout, attention)
        yield k, final_norm(x) if final_norm is not None and k == len(blocks) else x


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
