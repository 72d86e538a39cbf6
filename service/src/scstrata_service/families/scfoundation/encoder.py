"""scFoundation's encoder on packed cells, pooling any set of layers in one pass.

Module and parameter names follow the official checkpoint (``token_emb``, ``pos_emb``,
``encoder.transformer_encoder.{i}``, ``encoder.norm``) so its state dict loads strictly.
The blocks are ``torch.nn.TransformerEncoderLayer`` (post-norm, ReLU) for their weights; their
forward is re-written for packed tokens (no padding), which the per-cell reference in tests/
checks against the official one-cell-at-a-time computation. Layer L has the final norm
``encoder.norm``, as the official embedding code applies it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from scstrata_service.families.scfoundation.checkpoint import ScFoundationConfig
from scstrata_service.runtime.attention import PackedLayout
from scstrata_service.runtime.modules import PackedEncoderLayer
from scstrata_service.runtime.pooling import GeneTokens

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
    def __init__(self, dim: int, n_layers: int, n_heads: int):
        super().__init__()
        self.transformer_encoder = nn.ModuleList(
            PackedEncoderLayer(
                d_model=dim, nhead=n_heads, dim_feedforward=4 * dim, batch_first=True
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(dim)


class ScFoundationEncoder(nn.Module):
    """contract.PackedEncoder: token ids are gene positions (T and S after the genes)."""

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
    def blocks(self) -> nn.ModuleList:
        return self.encoder.transformer_encoder

    @property
    def final_norm(self) -> nn.Module:
        return self.encoder.norm

    def embed_inputs(
        self, token_ids: torch.Tensor, values: torch.Tensor, layout: PackedLayout
    ) -> torch.Tensor:
        """Layer 0: value embedding + gene position embedding (kept in fp32)."""
        return self.token_emb(values) + self.pos_emb(token_ids)

    def pooler(self, layout: PackedLayout) -> CellPooler:
        return CellPooler(layout)


class CellPooler:
    """scFoundation's poolings over packed cells whose last two tokens are T then S."""

    def __init__(self, layout: PackedLayout):
        ends = layout.offsets[1:]
        self.s_index, self.t_index = ends - 1, ends - 2
        self.genes = GeneTokens(layout, tail=2)

    def one(self, pooling: str, x: torch.Tensor) -> torch.Tensor:
        if pooling == "S":
            return x[self.s_index].float()
        if pooling == "T":
            return x[self.t_index].float()
        if pooling == "max":
            return self.genes.max(x)
        if pooling == "mean":
            return self.genes.mean(x)
        # "official", upstream pool_type='all': [S, T, max over genes, mean over genes]
        return torch.cat([self.one(p, x) for p in ("S", "T", "max", "mean")], dim=1)

    def __call__(self, poolings: Iterable[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {p: self.one(p, x) for p in poolings}
