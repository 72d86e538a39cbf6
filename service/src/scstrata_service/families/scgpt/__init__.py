"""scGPT (bowang-lab): the published release folder (args.json, vocab.json, best_model.pt),
served per layer."""

from __future__ import annotations

from pathlib import Path

from scstrata_service.contract import ModelCard
from scstrata_service.families.scgpt.checkpoint import load_checkpoint
from scstrata_service.families.scgpt.encoder import POOLINGS, ScGPTEncoder
from scstrata_service.families.scgpt.fabricate import fabricate_checkpoint
from scstrata_service.families.scgpt.tokenizer import ScGPTOptions, ScGPTTokenizer
from scstrata_service.runtime.backend import PackedBackend
from scstrata_service.runtime.device import DevicePolicy


def load(name: str, path: Path, **device: object) -> PackedBackend:
    """``device``: runtime/device.py's settings."""
    ckpt = load_checkpoint(Path(path))
    config = ckpt.config
    encoder = ScGPTEncoder(config)
    policy = DevicePolicy.choose(config.hidden, **device)
    policy.place(encoder, ckpt.encoder_state, encoder.transformer_encoder)
    tokenizer = ScGPTTokenizer(ckpt.vocabulary, config.pad_value)
    card = ModelCard(
        name=name,
        family="scgpt",
        n_layers=config.n_layers,
        hidden_size=config.hidden,
        poolings={p: config.hidden for p in POOLINGS},
        gene_id_kind="symbol",
        vocab_size=tokenizer.n_genes,
        checkpoint_digest=ckpt.digest,
        demo_weights=ckpt.demo_weights,
        final_norm=False,
        options=ScGPTOptions.describe(),
    )
    return PackedBackend(card, tokenizer, encoder, policy)


def fabricate(folder: Path, *, hidden: int, n_layers: int, n_heads: int, seed: int) -> Path:
    return fabricate_checkpoint(
        folder, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_genes=4000, seed=seed
    )
