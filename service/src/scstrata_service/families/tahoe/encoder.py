"""Tahoe-X1's encoder on packed cells, pooling any set of layers in one pass.

Module and parameter names follow the official ``TXModel`` (``gene_encoder``,
``expression_encoder``, ``transformer_encoder.layers.{i}.self_attn.Wqkv`` …,
``transformer_encoder.norm``) so the release's encoder weights load strictly. The forward
pass is written for packed tokens (no padding): linear layers and norms run on the flat
``[tokens, d_model]`` tensor and attention is restricted to each cell's own tokens, which
is what the official key-padding mask achieves on padded batches.

Layers: 0 = gene embedding + expression embedding (the official ``total_embs``; the flag
embedding only marks generated positions, of which inference has none), ``k`` = output of
block ``k``, ``L`` = output of the last block after ``transformer_encoder.norm``.
"""

from __future__ import annotations

import torch
from torch import nn

from scstrata_service.families.tahoe.checkpoint import TahoeConfig
from scstrata_service.runtime.attention import PackedLayout, packed_attention
from scstrata_service.runtime.modules import ExpressionEncoder, GeneEncoder, resolve_activation
from scstrata_service.runtime.pooling import ClsFirstPooler

POOLINGS = ("official", "cls", "mean")


class SelfAttention(nn.Module):
    """Fused qkv projection split as [d, kv*hd, kv*hd]; kv heads shared by query groups."""

    def __init__(self, config: TahoeConfig):
        super().__init__()
        d, kv, hd = config.d_model, config.kv_heads, config.head_dim
        self.n_heads, self.kv_heads, self.head_dim = config.n_heads, kv, hd
        self.Wqkv = nn.Linear(d, d + 2 * kv * hd)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, layout: PackedLayout, attention: str) -> torch.Tensor:
        tokens, d = x.shape
        kv_width = self.kv_heads * self.head_dim
        q, k, v = self.Wqkv(x).split([d, kv_width, kv_width], dim=1)
        q = q.view(tokens, self.n_heads, self.head_dim)
        k = k.view(tokens, self.kv_heads, self.head_dim)
        v = v.view(tokens, self.kv_heads, self.head_dim)
        if self.kv_heads != self.n_heads:
            # query head h reads kv head h // group (upstream repeats each kv head in place)
            group = self.n_heads // self.kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        # SDPA's default scale is 1/sqrt(head_dim), the upstream softmax scale
        mixed = packed_attention(q, k, v, layout, attention).reshape(tokens, d)
        return self.out_proj(mixed)


class Block(nn.Module):
    def __init__(self, config: TahoeConfig):
        super().__init__()
        d, hidden = config.d_model, config.ffn_hidden
        self.self_attn = SelfAttention(config)
        self.up_proj = nn.Linear(d, hidden)
        self.down_proj = nn.Linear(hidden, d)
        self.gate_proj = nn.Linear(d, hidden) if config.use_glu else None
        self.norm1 = nn.LayerNorm(d, eps=config.norm_eps)
        self.norm2 = nn.LayerNorm(d, eps=config.norm_eps)
        self.activation = resolve_activation(config.activation)
        self.pre_norm = config.norm_scheme == "pre"

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is not None:
            return self.down_proj(self.activation(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.activation(self.up_proj(x)))

    def forward(self, x: torch.Tensor, layout: PackedLayout, attention: str) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.self_attn(self.norm1(x), layout, attention)
            return x + self.feed_forward(self.norm2(x))
        x = self.norm1(x + self.self_attn(x, layout, attention))
        return self.norm2(x + self.feed_forward(x))


class TransformerStack(nn.Module):
    def __init__(self, config: TahoeConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        # upstream adds the final norm for the pre-norm scheme only
        pre = config.norm_scheme == "pre"
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps) if pre else None


class TahoeEncoder(nn.Module):
    """contract.PackedEncoder: token ids are vocabulary ids (``<cls>`` first in each cell)."""

    def __init__(self, config: TahoeConfig):
        super().__init__()
        self.config = config
        self.gene_encoder = GeneEncoder(config.vocab_size, config.d_model, config.gene_norm)
        self.expression_encoder = ExpressionEncoder(
            config.d_model, config.value_activation, config.value_norm, config.max_value
        )
        self.transformer_encoder = TransformerStack(config)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer_encoder.layers

    @property
    def final_norm(self) -> nn.Module | None:
        return self.transformer_encoder.norm

    def embed_inputs(
        self, token_ids: torch.Tensor, values: torch.Tensor, layout: PackedLayout
    ) -> torch.Tensor:
        """Layer 0: gene embedding + expression embedding (kept in fp32)."""
        return self.gene_encoder(token_ids) + self.expression_encoder(values)

    def pooler(self, layout: PackedLayout) -> ClsFirstPooler:
        # "official": the model's cell_emb_style, then the official extractor's L2 norm
        return ClsFirstPooler(layout, official=self.config.cell_emb_style)
