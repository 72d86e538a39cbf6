"""scFoundation's encoder on packed cells, pooling any set of layers in one pass.

Module and parameter names follow the official checkpoint (``token_emb``, ``pos_emb``,
``encoder.transformer_encoder.{i}``, ``encoder.norm``) so its state dict loads strictly.
The blocks are ``torch.nn.TransformerEncoderLayer`` (post-norm, ReLU) for their weights; the
forward pass is re-written for packed tokens (no padding), which the per-cell reference in
tests/ checks against the official one-cell-at-a-time computation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scstrata_service.families.scfoundation.checkpoint import ScFoundationConfig
from scstrata_service.fused import linear_relu
from scstrata_service.layer_pooling import block_states, pool_layers
from scstrata_service.packing import (
    PackedLayout,
    packed_attention,
    segment_max,
    segment_mean,
)

POOLINGS = ("official", "S", "T", "max", "mean")


class AutoDiscretizationEmbedding(nn.Module):
    """Value embedding: soft assignment of a scalar to ``bin_num`` learned bins."""

    def __init__(self, dim: int, bin_num: int, bin_alpha: float, mask_id: int, pad_id: int):
        super().__init__()
        self.bin_alpha, self.mask_id, self.pad_id = bin_alpha, mask_id, pad_id
        self.mlp = nn.Linear(1, bin_num)
        self.mlp2 = nn.Linear(bin_num, bin_num)
        self.emb = nn.Embedding(bin_num, dim)
        self.emb_mask = nn.Embedding(1, dim)
        self.emb_pad = nn.Embedding(1, dim)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.mlp(values.unsqueeze(-1)), 0.1)
        h = self.bin_alpha * h + self.mlp2(h)
        out = torch.softmax(h, dim=-1) @ self.emb.weight
        # Upstream swaps in special embeddings where the *value* equals these ids.
        out = torch.where((values == self.mask_id).unsqueeze(-1), self.emb_mask.weight[0], out)
        return torch.where((values == self.pad_id).unsqueeze(-1), self.emb_pad.weight[0], out)


class TransformerStack(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        self.transformer_encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=dim, nhead=heads, dim_feedforward=4 * dim, batch_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)


def packed_block(
    block: nn.TransformerEncoderLayer, x: torch.Tensor, layout: PackedLayout, attention: str
) -> torch.Tensor:
    """One post-norm encoder layer on ``[tokens, dim]``, attention within each cell."""
    attn = block.self_attn
    tokens, dim = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(tokens, 3, heads, dim // heads)
    q, k, v = qkv.unbind(1)
    mixed = packed_attention(q, k, v, layout, attention).reshape(tokens, dim)
    x = block.norm1(x + attn.out_proj(mixed))
    hidden = linear_relu(x, block.linear1.weight, block.linear1.bias)
    return block.norm2(x + block.linear2(hidden))


class ScFoundationEncoder(nn.Module):
    compile_blocks = False  # set by the backend: run blocks under torch.compile

    def __init__(self, config: ScFoundationConfig):
        super().__init__()
        self.config = config
        self.token_emb = AutoDiscretizationEmbedding(
            config.hidden_dim,
            config.bin_num,
            config.bin_alpha,
            config.mask_token_id,
            config.pad_token_id,
        )
        self.pos_emb = nn.Embedding(config.seq_len + 1, config.hidden_dim)
        self.encoder = TransformerStack(config.hidden_dim, config.depth, config.heads)

    @property
    def n_layers(self) -> int:
        return self.config.depth

    def embed_inputs(self, values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Layer 0: value embedding + gene position embedding (kept in fp32)."""
        return self.token_emb(values) + self.pos_emb(positions)

    def layer_states(
        self,
        values: torch.Tensor,
        positions: torch.Tensor,
        layout: PackedLayout,
        last: int,
        attention: str,
        compute_dtype: torch.dtype = torch.float32,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(k, states [tokens, dim])`` for k = 0..last (the final norm on layer L); blocks
        after ``last`` never run."""
        return block_states(
            self.embed_inputs(values, positions),
            self.encoder.transformer_encoder,
            packed_block,
            layout,
            last,
            attention,
            compile_blocks=self.compile_blocks,
            compute_dtype=compute_dtype,
            final_norm=self.encoder.norm,
        )

    # no_grad, not inference_mode: jagged nested tensors cannot be built from inference
    # tensors ("Cannot set version_counter for inference tensor").
    @torch.no_grad()
    def forward_pooled(
        self,
        values: torch.Tensor,
        positions: torch.Tensor,
        layout: PackedLayout,
        layers: Sequence[int],
        poolings: Sequence[str],
        attention: str,
        compute_dtype: torch.dtype = torch.float32,
    ) -> dict[str, dict[int, torch.Tensor]]:
        """Run blocks ``1..max(layers)`` (early exit) and pool each requested layer."""
        states = self.layer_states(values, positions, layout, max(layers), attention, compute_dtype)
        return pool_layers(states, layers, poolings, CellPooler(layout, values.device).all)


class CellPooler:
    """scFoundation's poolings over packed cells whose last two tokens are T then S."""

    def __init__(self, layout: PackedLayout, device: torch.device):
        ends = layout.offsets[1:]
        self.s_index, self.t_index = ends - 1, ends - 2
        gene_counts = torch.diff(layout.offsets) - 2
        self.n_cells = layout.n_cells
        self.gene_cell = torch.repeat_interleave(
            torch.arange(self.n_cells, device=device), gene_counts
        )
        is_gene = torch.ones(int(layout.offsets[-1]), dtype=torch.bool, device=device)
        is_gene[self.s_index] = False
        is_gene[self.t_index] = False
        self.gene_index = torch.nonzero(is_gene).squeeze(1)

    def __call__(self, pooling: str, x: torch.Tensor) -> torch.Tensor:
        if pooling == "S":
            return x[self.s_index].float()
        if pooling == "T":
            return x[self.t_index].float()
        if pooling == "max":
            return segment_max(x[self.gene_index], self.gene_cell, self.n_cells)
        if pooling == "mean":
            return segment_mean(x[self.gene_index], self.gene_cell, self.n_cells)
        if pooling == "official":
            # upstream pool_type='all': [S, T, max over genes, mean over genes]
            return torch.cat([self(p, x) for p in ("S", "T", "max", "mean")], dim=1)
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")

    def all(self, poolings: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {p: self(p, x) for p in poolings}
