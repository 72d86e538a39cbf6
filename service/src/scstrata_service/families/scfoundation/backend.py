"""scFoundation behind the common backend interface."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from scstrata_service.backend import ModelBackend, ModelCard, PooledLayers, TokenizedCells
from scstrata_service.families.scfoundation.checkpoint import load_checkpoint, load_vocabulary
from scstrata_service.families.scfoundation.encoder import POOLINGS, ScFoundationEncoder
from scstrata_service.families.scfoundation.tokenizer import (
    ScFoundationOptions,
    ScFoundationTokenizer,
)
from scstrata_service.packing import (
    PackedLayout,
    default_attention,
    default_max_tokens,
    embed_in_batches,
    gather_rows,
    pick_device,
)


class ScFoundationBackend(ModelBackend):
    def __init__(
        self,
        card: ModelCard,
        encoder: ScFoundationEncoder,
        tokenizer: ScFoundationTokenizer,
        device: torch.device,
        max_tokens: int | None = None,
        attention: str | None = None,
    ):
        self.card, self.encoder, self.tokenizer, self.device = card, encoder, tokenizer, device
        # bf16 blocks on GPU; the value embedding stays fp32 (its softmax over bins is cheap
        # and precision-sensitive). fp32 everywhere on CPU.
        self.compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.max_tokens = max_tokens or default_max_tokens(device, card.hidden_size)
        self.attention = attention or default_attention(device)

    @classmethod
    def load(
        cls,
        name: str,
        path: Path,
        *,
        version: str = "cell",
        device: str | None = None,
        max_tokens: int | None = None,
        attention: str | None = None,
    ) -> ScFoundationBackend:
        ckpt = load_checkpoint(Path(path), version)
        vocabulary = load_vocabulary(Path(path))
        config = ckpt.config
        if len(vocabulary) + 2 > config.seq_len:
            raise ValueError(
                f"{path}: {len(vocabulary)} genes + T + S exceed the checkpoint's seq_len "
                f"{config.seq_len}"
            )
        encoder = ScFoundationEncoder(config)
        encoder.load_state_dict(ckpt.encoder_state, strict=True)
        torch_device = pick_device(device)
        encoder.eval().to(torch_device)
        if torch_device.type == "cuda":
            encoder.encoder.to(torch.bfloat16)
        dim = config.hidden_dim
        card = ModelCard(
            name=name,
            family="scfoundation",
            n_layers=config.depth,
            hidden_size=dim,
            poolings={"official": 4 * dim, "S": dim, "T": dim, "max": dim, "mean": dim},
            gene_id_kind="symbol",
            vocab_size=len(vocabulary),
            checkpoint_digest=ckpt.digest,
            demo_weights=ckpt.demo_weights,
            options={k: f.description or "" for k, f in ScFoundationOptions.model_fields.items()},
        )
        return cls(
            card, encoder, ScFoundationTokenizer(vocabulary), torch_device, max_tokens, attention
        )

    def known_genes(self) -> list[str]:
        return list(self.tokenizer.vocabulary)

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
        unknown = set(poolings) - set(POOLINGS)
        if unknown:
            raise ValueError(f"unknown pooling(s) {sorted(unknown)}; choose from {POOLINGS}")
        return embed_in_batches(
            cells, self.max_tokens, lambda batch: self._forward(batch, layers, poolings)
        )

    def _forward(
        self, batch: TokenizedCells, layers: Sequence[int], poolings: Sequence[str]
    ) -> PooledLayers:
        pin = self.device.type == "cuda"
        values = torch.from_numpy(batch.values)
        positions = torch.from_numpy(batch.positions)
        if pin:
            values, positions = values.pin_memory(), positions.pin_memory()
        pooled = self.encoder.forward_pooled(
            values.to(self.device, non_blocking=True),
            positions.to(self.device, non_blocking=True),
            PackedLayout.from_offsets(np.asarray(batch.offsets), self.device),
            layers,
            poolings,
            self.attention,
            self.compute_dtype,
        )
        return gather_rows(pooled)
