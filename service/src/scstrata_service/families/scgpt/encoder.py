"""scGPT's encoder on packed cells, pooling any set of layers in one pass.

Module names follow the official ``TransformerModel`` (``encoder`` = gene encoder with its
norm, ``value_encoder``, ``transformer_encoder.layers.{i}``) so the release's encoder
weights load strictly. scGPT's gene and value encoders are the modules Tahoe-X1 inherited
from it (embedding -> LayerNorm; value clamped at 512 -> Linear -> ReLU -> Linear ->
LayerNorm), and its blocks are post-norm ``torch.nn.TransformerEncoderLayer``s (ReLU,
eps 1e-5) like scFoundation's, so those families' modules and packed block are used as
they are.

Layers: 0 = gene embedding + value embedding (the official ``total_embs``), ``k`` = output
of block ``k``; there is no final norm, so layer ``L`` is block ``L``'s output.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from scstrata_service.families.scfoundation.encoder import packed_block
from scstrata_service.families.scgpt.checkpoint import ScGPTConfig
from scstrata_service.families.tahoe.encoder import CellPooler, ExpressionEncoder, GeneEncoder
from scstrata_service.layer_pooling import block_states, pool_layers
from scstrata_service.packing import PackedLayout

POOLINGS = ("official", "cls", "mean")
MAX_VALUE = 512.0  # the official value encoder's clamp


class TransformerStack(nn.Module):
    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.hidden, config.n_heads, config.d_hid, dropout=0.0, batch_first=True
            )
            for _ in range(config.n_layers)
        )


class ScGPTEncoder(nn.Module):
    compile_blocks = False  # set by the backend: run blocks under torch.compile

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.config = config
        self.encoder = GeneEncoder(config.vocab_size, config.hidden, use_norm=True)
        self.value_encoder = ExpressionEncoder(
            config.hidden, "relu", use_norm=True, max_value=MAX_VALUE
        )
        self.transformer_encoder = TransformerStack(config)

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    def embed_inputs(self, genes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Layer 0: normed gene embedding + value embedding (kept in fp32)."""
        return self.encoder(genes) + self.value_encoder(values)

    def layer_states(
        self,
        genes: torch.Tensor,
        values: torch.Tensor,
        layout: PackedLayout,
        last: int,
        attention: str,
        compute_dtype: torch.dtype = torch.float32,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(k, states [tokens, dim])`` for k = 0..last; blocks after ``last`` never run."""
        return block_states(
            self.embed_inputs(genes, values),
            self.transformer_encoder.layers,
            packed_block,
            layout,
            last,
            attention,
            compile_blocks=self.compile_blocks,
            compute_dtype=compute_dtype,
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
        """Run blocks ``1..max(layers)`` (early exit) and pool each requested layer:
        ``official`` = the ``<cls>`` state L2-normalised (the official embedding), ``cls`` =
        it raw, ``mean`` = the mean of the gene tokens (not ``<cls>``)."""
        states = self.layer_states(genes, values, layout, max(layers), attention, compute_dtype)
        pool = CellPooler(layout, genes.device, "cls")
        return pool_layers(states, layers, poolings, pool.all)
