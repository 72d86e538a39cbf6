"""The one forward pass of every family: input embedding -> blocks (early exit) -> pooling.

A family's encoder supplies modules (contract.PackedEncoder); the loop is here. Layer 0 is
the input embedding as it is (fp32), layer ``k`` the output of block ``k`` in the compute
dtype, and layer ``L`` goes through the family's final norm when it has one and the readout
asks for it. Blocks after the deepest requested layer never run, and only the pooled vectors
of the requested layers are kept, never every hidden state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from scstrata_service.contract import PackedEncoder, TokenizedCells
from scstrata_service.layers import Readout
from scstrata_service.runtime import compile as compile_cache
from scstrata_service.runtime.attention import PackedLayout
from scstrata_service.runtime.device import DevicePolicy


class BlockRunner(Protocol):
    """Runs blocks ``1..last`` on layer 0; yields ``(k, states)`` for the ``wanted`` layers
    ``k >= 1`` (at least), before any final norm."""

    def __call__(
        self, x: torch.Tensor, layout: PackedLayout, last: int, wanted: frozenset[int]
    ) -> Iterator[tuple[int, torch.Tensor]]: ...


def torch_blocks(encoder: PackedEncoder, policy: DevicePolicy) -> BlockRunner:
    """The encoder's own blocks in torch, eager or under one compiled graph for all blocks."""

    def run(
        x: torch.Tensor, layout: PackedLayout, last: int, wanted: frozenset[int]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        forward: Callable = type(encoder.blocks[0]).forward
        step = compile_cache.compiled(forward) if policy.compile_blocks else forward
        x = x.to(policy.compute_dtype)
        for k in range(1, last + 1):
            x = step(encoder.blocks[k - 1], x, layout, policy.attention)
            yield k, x

    return run


def layer_states(
    encoder: PackedEncoder,
    cells: TokenizedCells,
    layout: PackedLayout,
    readout: Readout,
    policy: DevicePolicy,
    blocks: BlockRunner | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(k, states [tokens, dim])`` for the requested layers, in order (token states)."""
    wanted = frozenset(readout.layers)
    x = encoder.embed_inputs(
        policy.to_device(cells.token_ids), policy.to_device(cells.values), layout
    )
    if 0 in wanted:
        yield 0, x
    run = blocks or torch_blocks(encoder, policy)
    norm = encoder.final_norm if readout.final_norm else None
    depth = len(encoder.blocks)
    for k, states in run(x, layout, readout.last, wanted):
        if k in wanted:
            yield k, norm(states) if norm is not None and k == depth else states


# no_grad, not inference_mode: jagged nested tensors cannot be built from inference tensors
# ("Cannot set version_counter for inference tensor").
@torch.no_grad()
def forward(
    encoder: PackedEncoder,
    cells: TokenizedCells,
    readout: Readout,
    policy: DevicePolicy,
    blocks: BlockRunner | None = None,
) -> dict[str, dict[int, torch.Tensor]]:
    """``{pooling: {layer: vectors [cells, dim]}}`` of one packed batch, on the device."""
    layout = PackedLayout.from_offsets(cells.offsets, policy.device)
    pool = encoder.pooler(layout)
    out: dict[str, dict[int, torch.Tensor]] = {p: {} for p in readout.poolings}
    for k, states in layer_states(encoder, cells, layout, readout, policy, blocks):
        for pooling, vectors in pool(readout.poolings, states).items():
            out[pooling][k] = vectors
    return out
