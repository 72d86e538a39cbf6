"""Tahoe-X1 behind the common backend interface."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from scstrata_service.backend import ModelBackend, ModelCard, PooledLayers, TokenizedCells
from scstrata_service.families.tahoe.checkpoint import TahoeCheckpoint, load_checkpoint
from scstrata_service.families.tahoe.encoder import POOLINGS, TahoeEncoder
from scstrata_service.families.tahoe.tokenizer import TahoeOptions, TahoeTokenizer
from scstrata_service.packing import (
    PackedLayout,
    default_attention,
    default_max_tokens,
    embed_in_batches,
    gather_rows,
    pick_device,
)


def build_card(name: str, ckpt: TahoeCheckpoint, tokenizer: TahoeTokenizer) -> ModelCard:
    config, collator = ckpt.config, ckpt.collator
    options = {k: f.description or "" for k, f in TahoeOptions.model_fields.items()}
    options["max_length"] += f"; this model: {collator.max_length}"
    ensembl = sum(g.startswith("ENS") for g in tokenizer.index) * 2 >= max(1, tokenizer.n_genes)
    dim = config.d_model
    return ModelCard(
        name=name,
        family="tahoe",
        n_layers=config.n_layers,
        hidden_size=dim,
        poolings={p: dim for p in POOLINGS},
        gene_id_kind="ensembl" if ensembl else "symbol",
        vocab_size=tokenizer.n_genes,
        checkpoint_digest=ckpt.digest,
        demo_weights=ckpt.demo_weights,
        options=options,
    )


class TahoeBackend(ModelBackend):
    def __init__(
        self,
        card: ModelCard,
        encoder: TahoeEncoder,
        tokenizer: TahoeTokenizer,
        device: torch.device,
        max_tokens: int | None = None,
        attention: str | None = None,
    ):
        self.card, self.encoder, self.tokenizer, self.device = card, encoder, tokenizer, device
        # bf16 blocks on GPU (the release's amp_bf16); the two input encoders stay fp32.
        self.compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.max_tokens = max_tokens or default_max_tokens(device, card.hidden_size)
        self.attention = attention or default_attention(device)

    @classmethod
    def load(
        cls,
        name: str,
        path: Path,
        *,
        device: str | None = None,
        max_tokens: int | None = None,
        attention: str | None = None,
    ) -> TahoeBackend:
        ckpt = load_checkpoint(Path(path))
        encoder = TahoeEncoder(ckpt.config)
        encoder.load_state_dict(ckpt.encoder_state, strict=True)
        torch_device = pick_device(device)
        encoder.eval().to(torch_device)
        if torch_device.type == "cuda":
            encoder.transformer_encoder.to(torch.bfloat16)
        tokenizer = TahoeTokenizer(ckpt.vocabulary, ckpt.collator)
        card = build_card(name, ckpt, tokenizer)
        return cls(card, encoder, tokenizer, torch_device, max_tokens, attention)

    def known_genes(self) -> list[str]:
        return list(self.tokenizer.index)

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
        genes = torch.from_numpy(batch.positions)
        values = torch.from_numpy(batch.values)
        if pin:
            genes, values = genes.pin_memory(), values.pin_memory()
        pooled = self.encoder.forward_pooled(
            genes.to(self.device, non_blocking=True),
            values.to(self.device, non_blocking=True),
            PackedLayout.from_offsets(np.asarray(batch.offsets), self.device),
            layers,
            poolings,
            self.attention,
            self.compute_dtype,
        )
        return gather_rows(pooled)
