"""scGPT's encoder on packed cells, pooling any set of layers in one pass.

Module names follow the official ``TransformerModel`` (``encoder`` = gene encoder with its
norm, ``value_encoder``, ``transformer_encoder.layers.{i}``) so the release's encoder
weights load strictly. The gene and value encoders (embedding -> LayerNorm; value clamped
at 512 -> Linear -> ReLU -> Linear -> LayerNorm, the modules Tahoe-X1 inherited) and the
post-norm ``torch.nn.TransformerEncoderLayer`` blocks (ReLU, eps 1e-5, as scFoundation's)
are the runtime's shared modules (runtime/modules.py).

Layers: 0 = gene embedding + value embedding (the official ``total_embs``), ``k`` = output
of block ``k``; there is no final norm, so layer ``L`` is block ``L``'s output.
"""

from __future__ import annotations

import torch
from torch import nn

from scstrata_service.families.scgpt.checkpoint import ScGPTConfig
from scstrata_service.runtime.attention import PackedLayout
from scstrata_service.runtime.modules import ExpressionEncoder, GeneEncoder, PackedEncoderLayer
from scstrata_service.runtime.pooling import ClsFirstPooler

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
    def blocks(self) -> nn.ModuleList:
        return self.transformer_encoder.layers

    def embed_inputs(
        self, token_ids: torch.Tensor, values: torch.Tensor, layout: PackedLayout
    ) -> torch.Tensor:
        """Layer 0: normed gene embedding + value embedding (kept in fp32)."""
        return self.encoder(token_ids) + self.value_encoder(values)

    def pooler(self, layout: PackedLayout) -> ClsFirstPooler:
        return ClsFirstPooler(layout, official="cls")
