"""What every backend with a packed encoder shares: device and precision choice, the token
budget, pooling checks, host-to-device copies and batch orchestration.

A family supplies its card, tokenizer (``check`` / ``tokenize``) and encoder, and says in
:meth:`PackedBackend.forward_batch` how one packed batch goes through that encoder.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from scstrata_service.backend import ModelBackend, ModelCard, PooledLayers, TokenizedCells
from scstrata_service.packing import (
    PackedLayout,
    default_attention,
    default_max_tokens,
    embed_in_batches,
    gather_rows,
)


class PackedBackend(ModelBackend):
    def __init__(
        self,
        card: ModelCard,
        encoder: torch.nn.Module,
        tokenizer: Any,
        device: torch.device,
        max_tokens: int | None = None,
        attention: str | None = None,
    ):
        self.card, self.encoder, self.tokenizer, self.device = card, encoder, tokenizer, device
        # bf16 transformer blocks on GPU; each family keeps its input embeddings in fp32.
        self.compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.max_tokens = max_tokens or default_max_tokens(device, card.hidden_size)
        self.attention = attention or default_attention(device)

    def check_input(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping[str, object]
    ) -> None:
        self.tokenizer.check(counts, genes, options)

    def tokenize(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping[str, object]
    ) -> TokenizedCells:
        return self.tokenizer.tokenize(counts, genes, options)

    def embed(
        self, cells: TokenizedCells, layers: Sequence[int], poolings: Sequence[str]
    ) -> PooledLayers:
        unknown = set(poolings) - set(self.card.poolings)
        if unknown:
            raise ValueError(
                f"unknown pooling(s) {sorted(unknown)}; choose from {sorted(self.card.poolings)}"
            )

        def forward(batch: TokenizedCells) -> PooledLayers:
            layout = PackedLayout.from_offsets(np.asarray(batch.offsets), self.device)
            return gather_rows(self.forward_batch(batch, layout, layers, poolings))

        return embed_in_batches(cells, self.max_tokens, forward)

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        """Host array -> device tensor; pinned and non-blocking on CUDA."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    @abc.abstractmethod
    def forward_batch(
        self,
        batch: TokenizedCells,
        layout: PackedLayout,
        layers: Sequence[int],
        poolings: Sequence[str],
    ) -> dict[str, dict[int, torch.Tensor]]:
        """Run the encoder on one packed batch; pooled vectors per pooling and layer."""
