"""Tahoe-X1 behind the common backend interface."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from scstrata_service.backend import ModelCard, TokenizedCells
from scstrata_service.families.tahoe.checkpoint import TahoeCheckpoint, load_checkpoint
from scstrata_service.families.tahoe.encoder import POOLINGS, TahoeEncoder
from scstrata_service.families.tahoe.tokenizer import TahoeOptions, TahoeTokenizer
from scstrata_service.packed_backend import PackedBackend, place_encoder
from scstrata_service.packing import PackedLayout


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


class TahoeBackend(PackedBackend):
    @classmethod
    def load(
        cls,
        name: str,
        path: Path,
        *,
        device: str | None = None,
        max_tokens: int | None = None,
        attention: str | None = None,
        compile_blocks: bool | None = None,
    ) -> TahoeBackend:
        ckpt = load_checkpoint(Path(path))
        encoder = TahoeEncoder(ckpt.config)
        torch_device = place_encoder(
            encoder, ckpt.encoder_state, device, encoder.transformer_encoder
        )
        tokenizer = TahoeTokenizer(ckpt.vocabulary, ckpt.collator)
        card = build_card(name, ckpt, tokenizer)
        return cls(card, encoder, tokenizer, torch_device, max_tokens, attention, compile_blocks)

    def known_genes(self) -> list[str]:
        return list(self.tokenizer.index)

    def forward_batch(
        self,
        batch: TokenizedCells,
        layout: PackedLayout,
        layers: Sequence[int],
        poolings: Sequence[str],
    ) -> dict[str, dict[int, torch.Tensor]]:
        return self.encoder.forward_pooled(
            self.to_device(batch.positions),  # gene token ids
            self.to_device(batch.values),
            layout,
            layers,
            poolings,
            self.attention,
            self.compute_dtype,
        )
