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

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scstrata_service.families.tahoe.checkpoint import TahoeConfig
from scstrata_service.layer_pooling import block_states, pool_layers
from scstrata_service.packing import PackedLayout, packed_attention, segment_mean

POOLINGS = ("official", "cls", "mean")


def resolve_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """An activation by its torch.nn.functional name, as upstream resolves it (gelu = exact)."""
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    return getattr(F, name)


class GeneEncoder(nn.Module):
    def __init__(self, vocab_size: int, dim: int, use_norm: bool):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.enc_norm = nn.LayerNorm(dim) if use_norm else None

    def forward(self, genes: torch.Tensor) -> torch.Tensor:
        x = self.embedding(genes)
        return self.enc_norm(x) if self.enc_norm is not None else x


class ExpressionEncoder(nn.Module):
    """Scalar value -> vector: linear -> activation -> linear (-> norm), value clamped above."""

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
    compile_blocks = False  # set by the backend: run blocks under torch.compile

    def __init__(self, config: TahoeConfig):
        super().__init__()
        self.config = config
        self.gene_encoder = GeneEncoder(config.vocab_size, config.d_model, config.gene_norm)
        self.expression_encoder = ExpressionEncoder(
            config.d_model, config.value_activation, config.value_norm, config.max_value
        )
        self.transformer_encoder = TransformerStack(config)

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    def embed_inputs(self, genes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Layer 0: gene embedding + expression embedding (kept in fp32)."""
        return self.gene_encoder(genes) + self.expression_encoder(values)

    def layer_states(
        self,
        genes: torch.Tensor,
        values: torch.Tensor,
        layout: PackedLayout,
        last: int,
        attention: str,
        compute_dtype: torch.dtype = torch.float32,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(k, states [tokens, dim])`` for k = 0..last (the final norm, where the model has
        one, on layer L); blocks after ``last`` never run."""
        return block_states(
            self.embed_inputs(genes, values),
            self.transformer_encoder.layers,
            Block.forward,
            layout,
            last,
            attention,
            compile_blocks=self.compile_blocks,
            compute_dtype=compute_dtype,
            final_norm=self.transformer_encoder.norm,
        )

    # no_grad, not inference_mode: jagged nested tensors cannot be built from inference tensors
    @torch.no_grad()
    def forward_pooled(
        self,
        genes: torch.Tensor,
        values: torch.Tensor,
        layout: PackedLayout,
        layers: Sequence[int],
        poolings: Sequence[str],
        attention: str,
        compute_dtype: torch.dtype = torch.float32,
    ) -> dict[str, dict[int, torch.Tensor]]:
        """Run blocks ``1..max(layers)`` (early exit) and pool each requested layer."""
        states = self.layer_states(genes, values, layout, max(layers), attention, compute_dtype)
        pool = CellPooler(layout, genes.device, self.config.cell_emb_style)
        return pool_layers(states, layers, poolings, pool.all)


class CellPooler:
    """Tahoe-X1's poolings over packed cells whose first token is ``<cls>``."""

    def __init__(self, layout: PackedLayout, device: torch.device, cell_emb_style: str):
        self.style = cell_emb_style
        self.n_cells = layout.n_cells
        self.cls_index = layout.offsets[:-1]
        lengths = torch.diff(layout.offsets)
        cells = torch.arange(self.n_cells, device=device)
        self.token_cell = torch.repeat_interleave(cells, lengths)
        is_gene = torch.ones(int(layout.offsets[-1]), dtype=torch.bool, device=device)
        is_gene[self.cls_index] = False
        self.gene_index = torch.nonzero(is_gene).squeeze(1)
        self.gene_cell = self.token_cell[self.gene_index]

    def __call__(self, pooling: str, x: torch.Tensor) -> torch.Tensor:
        if pooling == "cls":
            return x[self.cls_index].float()
        if pooling == "mean":
            return segment_mean(x[self.gene_index], self.gene_cell, self.n_cells)
        if pooling == "official":
            # the model's cell_emb_style, then the official extractor's L2 normalisation
            if self.style == "cls":
                cell = x[self.cls_index].float()
            else:  # avg-pool: every token of the cell, <cls> included
                cell = segment_mean(x, self.token_cell, self.n_cells)
            return F.normalize(cell, dim=1)
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")

    def all(self, poolings: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {p: self(p, x) for p in poolings}
