"""Encoder modules that more than one family is built from, run on packed ``[tokens, dim]``
states.

Each keeps the attribute names of the official module it stands for, so the state-dict keys
(``embedding.weight``, ``linear1.bias``, ``self_attn.in_proj_weight`` …) are the release's
wherever a family mounts it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from scstrata_service.runtime.attention import PackedLayout, packed_attention
from scstrata_service.runtime.fused import linear_relu


def resolve_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """An activation by its torch.nn.functional name, as upstream resolves it (gelu = exact)."""
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    return getattr(F, name)


class GeneEncoder(nn.Module):
    """Token id -> vector: embedding, then LayerNorm when ``use_norm`` (scGPT's gene encoder,
    which Tahoe-X1 inherited)."""

    def __init__(self, vocab_size: int, dim: int, use_norm: bool):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.enc_norm = nn.LayerNorm(dim) if use_norm else None

    def forward(self, genes: torch.Tensor) -> torch.Tensor:
        x = self.embedding(genes)
        return self.enc_norm(x) if self.enc_norm is not None else x


class ExpressionEncoder(nn.Module):
    """Scalar value -> vector: linear -> activation -> linear (-> norm), value clamped above
    (scGPT's continuous value encoder, which Tahoe-X1 inherited)."""

    def __init__(self, dim: int, activation: str, use_norm: bool, max_value: float):
        super().__init__()
        self.linear1 = nn.Linear(1, dim)
        self.linear2 = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim) if use_norm else None
        self.activation = resolve_activation(activation)
        self.max_value = max_value

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = values.clamp(max=self.max_value).unsqueeze(-1)
        x = self.linear2(self.activation(self.linear1(x)))
        return self.norm(x) if self.norm is not None else x


class PackedEncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` (post-norm, ReLU; its parameter names, so the release's
    tensors load strictly) whose forward runs on packed ``[tokens, dim]`` states, attention
    within each cell (scFoundation's and scGPT's blocks)."""

    def forward(self, x: torch.Tensor, layout: PackedLayout, attention: str) -> torch.Tensor:
        attn = self.self_attn
        tokens, dim = x.shape
        heads = attn.num_heads
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(tokens, 3, heads, dim // heads).unbind(1)
        mixed = packed_attention(q, k, v, layout, attention).reshape(tokens, dim)
        x = self.norm1(x + attn.out_proj(mixed))
        hidden = linear_relu(x, self.linear1.weight, self.linear1.bias)
        return self.norm2(x + self.linear2(hidden))
