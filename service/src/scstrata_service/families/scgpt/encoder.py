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

import torch
from torch import nn

from scstrata_service.families.scfoundation.encoder import PackedEncoderLayer
from scstrata_service.families.scgpt.checkpoint import ScGPTConfig
from scstrata_service.families.tahoe.encoder import CellPooler, ExpressionEncoder, GeneEncoder
from scstrata_service.runtime.attention import PackedLayout

POOLINGS = ("official", "cls", "mean")
MAX_VALUE = 512.0  # the official value encoder's clamp


class TransformerStack(nn.Module):
    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            PackedEncoderLayer(
                config.hidden, config.n_heads, config.d_hid, dropout=0.0, batch_first=True
            )
            for _ in range(config.n_layers)
        )


class ScGPTEncoder(nn.Module):
    """contract.PackedEncoder: token ids are vocabulary ids (``<cls>`` first in each cell).

    Poolings: ``official`` = the ``<cls>`` state L2-normalised (the official embedding),
    ``cls`` = it raw, ``mean`` = the mean of the gene tokens (not ``<cls>``).
    """

    final_norm = None  # post-norm blocks, no norm after the last: layer L is block L

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

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer_encoder.layers

    def embed_inputs(
        self, token_ids: torch.Tensor, values: torch.Tensor, layout: PackedLayout
    ) -> torch.Tensor:
        """Layer 0: normed gene embedding + value embedding (kept in fp32)."""
        return self.encoder(token_ids) + self.value_encoder(values)

    def pooler(self, layout: PackedLayout) -> CellPooler:
        return CellPooler(layout, "cls")
