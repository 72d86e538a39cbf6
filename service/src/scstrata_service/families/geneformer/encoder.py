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

from collections.abc import Iterable

import torch
from torch import nn

from scstrata_service.runtime.attention import PackedLayout, packed_attention
from scstrata_service.runtime.pooling import GeneTokens

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
    """``BertModel`` without pooler; ``load_state_dict`` takes its ``bert.*`` tensors.

    contract.PackedEncoder: token ids are the model's input ids; ``special_tokens`` (V2) =
    every cell is ``<cls>`` genes ``<eos>``.
    """

    final_norm = None  # BERT has no norm after the last block

    def __init__(self, config: object, special_tokens: bool):
        super().__init__()
        from transformers.activations import ACT2FN

        c = config
        eps = float(c.layer_norm_eps)
        self.special_tokens = special_tokens
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

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder["layer"]

    def embed_inputs(
        self, token_ids: torch.Tensor, values: torch.Tensor, layout: PackedLayout
    ) -> torch.Tensor:
        """Layer 0 (fp32) from the token ids; the rank values are not model inputs."""
        if layout.max_length > self.max_positions:
            raise ValueError(
                f"a cell of {layout.max_length} tokens exceeds the model's "
                f"{self.max_positions} positions"
            )
        # host-side sizes (layout.bounds) keep these index ops free of device syncs
        starts = torch.repeat_interleave(
            layout.offsets[:-1], torch.diff(layout.offsets), output_size=len(token_ids)
        )
        position_in_cell = torch.arange(len(token_ids), device=token_ids.device) - starts
        return self.embeddings(token_ids, position_in_cell)

    def pooler(self, layout: PackedLayout) -> CellPooler:
        return CellPooler(layout, self.special_tokens)


class CellPooler:
    """Geneformer's poolings over packed cells (V2 cells are ``<cls>`` genes ``<eos>``)."""

    def __init__(self, layout: PackedLayout, special_tokens: bool):
        self.cls_index = layout.offsets[:-1]
        self.genes = GeneTokens(layout, head=1, tail=1) if special_tokens else GeneTokens(layout)

    def __call__(self, poolings: Iterable[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        mean = None
        for pooling in poolings:
            if pooling == "cls":  # offered by V2 cards only
                out[pooling] = x[self.cls_index].float()
            else:
                # "official" = the official cell embedding: mean over gene tokens, <cls>/<eos>
                # excluded; "mean" is the same vector under the name other families use
                mean = self.genes.mean(x) if mean is None else mean
                out[pooling] = mean
        return out
