"""Packed attention: each cell attends to its own tokens only, in a packed batch (all families).

A cell is a variable-length token sequence. Instead of padding cells to a common length the
runtime concatenates their tokens ("packing"); linear layers and norms run on the flat
``[tokens, dim]`` tensor, and only attention needs the cell boundaries (:class:`PackedLayout`).
No compute or memory goes to padding (serving-notes.md: padding wastes most of a GPU).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# per_cell: a loop of SDPA calls (CPU default); nested: jagged nested tensors through SDPA;
# varlen / cudnn: the flash / cuDNN kernels called directly on the packed tokens with
# cumulative offsets (CUDA only; no nested-tensor copies or host syncs per block).
ATTENTION_IMPLS = ("per_cell", "nested", "varlen", "cudnn")
CUDA_ONLY_ATTENTION = ("varlen", "cudnn")


@dataclass
class PackedLayout:
    """Cell boundaries of one packed batch, on the device, plus derived index vectors."""

    offsets: torch.Tensor  # [n_cells + 1] int64
    bounds: list[int]  # the same offsets as Python ints, for per-cell loops
    cu_seqlens: torch.Tensor  # the offsets as int32, as the varlen kernels take them
    max_length: int  # the longest cell, known on the host (no device sync to find it)

    @classmethod
    def from_offsets(cls, offsets: np.ndarray, device: torch.device) -> PackedLayout:
        offsets = np.asarray(offsets, dtype=np.int64)
        on_device = torch.as_tensor(offsets, device=device)
        longest = int(np.diff(offsets).max()) if len(offsets) > 1 else 0
        return cls(on_device, offsets.tolist(), on_device.to(torch.int32), longest)

    @property
    def n_cells(self) -> int:
        return len(self.bounds) - 1


def packed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout, impl: str
) -> torch.Tensor:
    """Softmax attention of ``[tokens, heads, head_dim]`` inputs, each cell on its own tokens.

    Goes through one registered operator, so ``torch.compile`` can fuse the dense work around
    it (projections, norms, activations) while attention stays an opaque kernel call.
    """
    if impl not in ATTENTION_IMPLS:  # chosen and checked once, by runtime/device.py
        raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {impl!r}")
    return _attention_op(q, k, v, layout.offsets, layout.cu_seqlens, layout.max_length, impl)


@torch.library.custom_op("scstrata::packed_attention", mutates_args=())
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_length: int,
    impl: str,
) -> torch.Tensor:
    if impl == "varlen":
        # FlashAttention-2's variable-length kernel reads the packed rows in place (any row
        # stride, so q/k/v stay views of the fused projection).
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_seqlens, max_length, max_length, 0.0, False, False
        )[0]
        return out.contiguous()
    if impl == "cudnn":
        out = torch.ops.aten._cudnn_attention_forward(
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            None,
            cu_seqlens,
            cu_seqlens,
            max_length,
            max_length,
            False,
        )[0]
        return out.contiguous()
    if impl == "nested":

        def nest(t: torch.Tensor) -> torch.Tensor:
            # contiguous first: SDPA rejects strided jagged views (serving-notes.md); the host
            # knows the longest cell, so the nested tensor need not sync to find it
            nested = torch.nested.nested_tensor_from_jagged(
                t.contiguous(), offsets, max_seqlen=max_length
            )
            return nested.transpose(1, 2)

        out = F.scaled_dot_product_attention(nest(q), nest(k), nest(v))
        return out.transpose(1, 2).values().contiguous()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    bounds = offsets.tolist()
    for s, e in itertools.pairwise(bounds):
        # [1, heads, n, head_dim], contiguous: strided inputs fall off SDPA's fused CPU
        # kernel (2.5x slower in bench/RESULTS.md)
        qc, kc, vc = (t[s:e].transpose(0, 1).contiguous()[None] for t in (q, k, v))
        out[s:e] = F.scaled_dot_product_attention(qc, kc, vc)[0].transpose(0, 1)
    return out


@_attention_op.register_fake
def _(q, k, v, offsets, cu_seqlens, max_length, impl):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)
