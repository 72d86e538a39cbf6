"""Geneformer's BERT encoder on packed cells, pooling any set of layers in one pass.

The forward pass is Hugging Face's ``BertModel`` (absolute positions, post-LN blocks) written
out for packed tokens: no padding, attention restricted to each cell. Weights come from the
checkpoint's ``bert.*`` tensors; transformers is only needed to load them.

- Layer 0 (``hidden_states[0]``): ``LayerNorm(word[id] + position[i] + token_type[0])``,
  where ``i`` restarts at 0 in every cell (as a padded batch with default position ids).
- Block: ``x = LN1(x + Wo·attn(x))``; ``x = LN2(x + W2·act(W1·x))``; attention scale
  ``1/sqrt(head_dim)``; ``act`` = the config's ``hidden_act``; LayerNorm eps from config.
- Layer ``k`` = ``hidden_states[k]``; BERT has no norm after the last block.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from scstrata_service.layer_pooling import block_states, pool_layers
from scstrata_service.packing import PackedLayout, packed_attention, segment_mean

POOLINGS = ("official", "mean", "cls")


class BertEmbeddingsPacked(nn.Module):
    def __init__(self, vocab: int, positions: int, types: int, dim: int, eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)
        self.position_embeddings = nn.Embedding(positions, dim)
        self.token_type_embeddings = nn.Embedding(types, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)

    def forward(self, ids: torch.Tensor, position_in_cell: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(ids) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x + self.position_embeddings(position_in_cell))


class BertBlockPacked(nn.Module):
    """One ``BertLayer``: names follow the checkpoint so its tensors load strictly."""

    def __init__(self, dim: int, heads: int, intermediate: int, eps: float, act: nn.Module):
        super().__init__()
        self.heads = heads
        self.attention = nn.ModuleDict(
            {
                "self": nn.ModuleDict(
                    {name: nn.Linear(dim, dim) for name in ("query", "key", "value")}
                ),
                "output": nn.ModuleDict(
                    {"dense": nn.Linear(dim, dim), "LayerNorm": nn.LayerNorm(dim, eps=eps)}
                ),
            }
        )
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(dim, intermediate)})
        self.output = nn.ModuleDict(
            {"dense": nn.Linear(intermediate, dim), "LayerNorm": nn.LayerNorm(dim, eps=eps)}
        )
        self.act = act

    def forward(self, x: torch.Tensor, layout: PackedLayout, attention: str) -> torch.Tensor:
        tokens, dim = x.shape
        proj = self.attention["self"]
        q, k, v = (proj[n](x).view(tokens, self.heads, -1) for n in ("query", "key", "value"))
        mixed = packed_attention(q, k, v, layout, attention).reshape(tokens, dim)
        out = self.attention["output"]
        x = out["LayerNorm"](x + out["dense"](mixed))
        hidden = self.act(self.intermediate["dense"](x))
        return self.output["LayerNorm"](x + self.output["dense"](hidden))


class GeneformerEncoder(nn.Module):
    """``BertModel`` without pooler; ``load_state_dict`` takes its ``bert.*`` tensors."""

    compile_blocks = False  # set by the backend: run blocks under torch.compile

    def __init__(self, config: object):
        super().__init__()
        from transformers.activations import ACT2FN

        c = config
        eps = float(c.layer_norm_eps)
        self.n_layers = int(c.num_hidden_layers)
        self.hidden_size = int(c.hidden_size)
        self.max_positions = int(c.max_position_embeddings)
        if self.hidden_size % int(c.num_attention_heads):
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        self.embeddings = BertEmbeddingsPacked(
            int(c.vocab_size), self.max_positions, int(c.type_vocab_size), self.hidden_size, eps
        )
        self.encoder = nn.ModuleDict(
            {
                "layer": nn.ModuleList(
                    BertBlockPacked(
                        self.hidden_size,
                        int(c.num_attention_heads),
                        int(c.intermediate_size),
                        eps,
                        ACT2FN[c.hidden_act],
                    )
                    for _ in range(self.n_layers)
                )
            }
        )

    def layer_states(
        self,
        ids: torch.Tensor,
        layout: PackedLayout,
        last: int,
        attention: str,
        compute_dtype: torch.dtype = torch.float32,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(k, states [tokens, dim])`` for k = 0..last; blocks after ``last`` never run."""
        if layout.max_length > self.max_positions:
            raise ValueError(
                f"a cell of {layout.max_length} tokens exceeds the model's "
                f"{self.max_positions} positions"
            )
        # host-side sizes (layout.bounds) keep these index ops free of device syncs
        starts = torch.repeat_interleave(
            layout.offsets[:-1], torch.diff(layout.offsets), output_size=len(ids)
        )
        position_in_cell = torch.arange(len(ids), device=ids.device) - starts
        return block_states(
            self.embeddings(ids, position_in_cell),  # fp32: embedding tables stay fp32
            self.encoder["layer"],
            BertBlockPacked.forward,
            layout,
            last,
            attention,
            compile_blocks=self.compile_blocks,
            compute_dtype=compute_dtype,
        )

    # no_grad, not inference_mode: jagged nested tensors cannot be built from inference
    # tensors ("Cannot set version_counter for inference tensor").
    @torch.no_grad()
    def forward_pooled(
        self,
        ids: torch.Tensor,
        layout: PackedLayout,
        layers: Sequence[int],
        poolings: Sequence[str],
        attention: str,
        has_special_tokens: bool,
        compute_dtype: torch.dtype = torch.float32,
    ) -> dict[str, dict[int, torch.Tensor]]:
        """Run blocks ``1..max(layers)`` (early exit) and pool each requested layer."""
        states = self.layer_states(ids, layout, max(layers), attention, compute_dtype)
        return pool_layers(states, layers, poolings, CellPooler(layout, has_special_tokens).all)


class CellPooler:
    """Geneformer's poolings over packed cells (V2 cells are ``<cls>`` genes ``<eos>``)."""

    def __init__(self, layout: PackedLayout, has_special_tokens: bool):
        offsets = layout.offsets
        device = offsets.device
        self.n_cells = layout.n_cells
        self.special = has_special_tokens
        self.cls_index = offsets[:-1]
        n_tokens = layout.bounds[-1]
        if has_special_tokens:
            gene_counts = torch.diff(offsets) - 2
            n_genes = n_tokens - 2 * self.n_cells
        else:
            gene_counts = torch.diff(offsets)
            n_genes = n_tokens
        self.gene_cell = torch.repeat_interleave(
            torch.arange(self.n_cells, device=device), gene_counts, output_size=n_genes
        )
        # V2: the g-th gene token of the batch sits after its cell's <cls> and after the
        # <cls>/<eos> pairs of the cells before it. V1: every token is a gene token.
        self.gene_index = (
            torch.arange(n_genes, device=device) + 2 * self.gene_cell + 1
            if has_special_tokens
            else None
        )

    def all(self, poolings: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for pooling in poolings:
            if pooling in ("official", "mean"):
                # the official cell embedding: mean over gene tokens, <cls>/<eos> excluded;
                # "mean" is the same vector under the name other families use
                if "_mean" not in out:
                    genes = x if self.gene_index is None else x[self.gene_index]
                    out["_mean"] = segment_mean(genes, self.gene_cell, self.n_cells)
                out[pooling] = out["_mean"]
            elif pooling == "cls":
                if not self.special:
                    raise ValueError("pooling 'cls' needs a V2 model (V1 has no <cls> token)")
                out[pooling] = x[self.cls_index].float()
            else:
                raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        out.pop("_mean", None)
        return out
