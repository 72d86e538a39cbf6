"""scGPT behind the common backend interface."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from scstrata_service.backend import ModelCard, TokenizedCells
from scstrata_service.families.scgpt.checkpoint import ScGPTCheckpoint, load_checkpoint
from scstrata_service.families.scgpt.encoder import POOLINGS, ScGPTEncoder
from scstrata_service.families.scgpt.tokenizer import ScGPTOptions, ScGPTTokenizer
from scstrata_service.packed_backend import PackedBackend, place_encoder
from scstrata_service.packing import PackedLayout


def build_card(name: str, ckpt: ScGPTCheckpoint, tokenizer: ScGPTTokenizer) -> ModelCard:
    config = ckpt.config
    return ModelCard(
        name=name,
        family="scgpt",
        n_layers=config.n_layers,
        hidden_size=config.hidden,
        poolings={p: config.hidden for p in POOLINGS},
        gene_id_kind="symbol",
        vocab_size=tokenizer.n_genes,
        checkpoint_digest=ckpt.digest,
        demo_weights=ckpt.demo_weights,
        options={k: f.description or "" for k, f in ScGPTOptions.model_fields.items()},
    )


class ScGPTBackend(PackedBackend):
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
    ) -> ScGPTBackend:
        ckpt = load_checkpoint(Path(path))
        encoder = ScGPTEncoder(ckpt.config)
        torch_device = place_encoder(
            encoder, ckpt.encoder_state, device, encoder.transformer_encoder
        )
        tokenizer = ScGPTTokenizer(ckpt.vocabulary, ckpt.config.pad_value)
        card = build_card(name, ckpt, tokenizer)
        return cls(card, encoder, tokenizer, torch_device, max_tokens, attention, compile_blocks)

    def known_genes(self) -> list[str]:
        return self.tokenizer.known_genes()

    def forward_batch(
        self,
        batch: TokenizedCells,
        layout: PackedLayout,
        layers: Sequence[int],
        poolings: Sequence[str],
    ) -> dict[str, dict[int, torch.Tensor]]:
        return self.encoder.forward_pooled(
            self.to_device(batch.positions),  # token ids
            self.to_device(batch.values),
            layout,
            layers,
            poolings,
            self.attention,
            self.compute_dtype,
        )
