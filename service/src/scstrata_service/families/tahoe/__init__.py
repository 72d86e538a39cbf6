"""Tahoe-X1 (docs/models.md): the published release folder (configs, vocabulary, weights)."""

from __future__ import annotations

from pathlib import Path

from scstrata_service.contract import ModelCard
from scstrata_service.families.tahoe.checkpoint import load_checkpoint
from scstrata_service.families.tahoe.encoder import POOLINGS, TahoeEncoder
from scstrata_service.families.tahoe.fabricate import fabricate_checkpoint
from scstrata_service.families.tahoe.tokenizer import TahoeOptions, TahoeTokenizer
from scstrata_service.runtime.backend import PackedBackend
from scstrata_service.runtime.device import DevicePolicy


def load(name: str, path: Path, **device: object) -> PackedBackend:
    """``device``: runtime/device.py's settings."""
    ckpt = load_checkpoint(Path(path))
    config, collator = ckpt.config, ckpt.collator
    encoder = TahoeEncoder(config)
    policy = DevicePolicy.choose(config.d_model, **device)
    policy.place(encoder, ckpt.encoder_state, encoder.transformer_encoder)
    tokenizer = TahoeTokenizer(ckpt.vocabulary, collator)
    options = TahoeOptions.describe()
    options["max_length"] += f"; this model: {collator.max_length}"
    ensembl = sum(g.startswith("ENS") for g in tokenizer.index) * 2 >= max(1, tokenizer.n_genes)
    card = ModelCard(
        name=name,
        family="tahoe",
        n_layers=config.n_layers,
        hidden_size=config.d_model,
        poolings={p: config.d_model for p in POOLINGS},
        gene_id_kind="ensembl" if ensembl else "symbol",
        vocab_size=tokenizer.n_genes,
        checkpoint_digest=ckpt.digest,
        demo_weights=ckpt.demo_weights,
        final_norm=encoder.final_norm is not None,  # pre-norm releases only
        options=options,
    )
    return PackedBackend(card, tokenizer, encoder, policy)


def fabricate(folder: Path, *, hidden: int, n_layers: int, n_heads: int, seed: int) -> Path:
    return fabricate_checkpoint(
        folder,
        hidden=hidden,
        n_layers=n_layers,
        n_heads=n_heads,
        vocab_genes=4000,
        max_length=2048,
        seed=seed,
    )
