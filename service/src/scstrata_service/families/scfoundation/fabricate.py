"""Write a small scFoundation checkpoint in the official `models.ckpt` layout.

RANDOM DEMO WEIGHTS. The file has the real structure (``gene``/``cell``/``rde``
sub-checkpoints, nested config, ``model.``-prefixed keys, performer decoder keys) so the
loader is exercised exactly as with the release, but its numbers mean nothing biologically.
Each sub-checkpoint carries ``demo_weights: True`` so the service labels it on its card.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import torch

from scstrata_service.families.scfoundation.checkpoint import (
    CHECKPOINT_FILE,
    VOCABULARY_FILE,
    ScFoundationConfig,
)
from scstrata_service.families.scfoundation.encoder import ScFoundationEncoder

N_VOCAB = 19_264


def _config_dict(hidden: int, n_layers: int, n_heads: int, decoder_hidden: int) -> dict:
    """The nested config the release stores (released values: 768 / 12 / 12, decoder 512)."""
    return {
        "model": "mae_autobin",
        "model_config": {
            "mae_autobin": {
                # the official loader reads config["model"] from the flattened model config
                "model": "mae_autobin",
                "n_class": 104,
                "pad_token_id": 103,
                "mask_token_id": 102,
                "bin_num": 100,
                "bin_alpha": 1.0,
                "encoder": {
                    "hidden_dim": hidden,
                    "depth": n_layers,
                    "heads": n_heads,
                    "module_type": "transformer",
                },
                "decoder": {
                    "hidden_dim": decoder_hidden,
                    "depth": 1,
                    "heads": 2,
                    "dim_head": decoder_hidden // 2,
                    "module_type": "performer",
                },
            }
        },
        "dataset_config": {"rnaseq": {"seq_len": N_VOCAB + 2}},
    }


def _decoder_state(hidden: int, decoder_hidden: int, generator: torch.Generator) -> dict:
    """Every key of the official depth-1 performer decoder and of the decoder head, named and
    shaped as upstream (so the official loader's strict load finds all of them); the service
    ignores them."""

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    d = decoder_hidden
    prefix = "decoder.performer.net.layers.0"
    return {
        f"{prefix}.0.norm.weight": torch.ones(d),
        f"{prefix}.0.norm.bias": torch.zeros(d),
        f"{prefix}.0.fn.to_q.weight": rand(d, d),
        f"{prefix}.0.fn.to_q.bias": torch.zeros(d),
        f"{prefix}.0.fn.to_k.weight": rand(d, d),
        f"{prefix}.0.fn.to_k.bias": torch.zeros(d),
        f"{prefix}.0.fn.to_v.weight": rand(d, d),
        f"{prefix}.0.fn.to_v.bias": torch.zeros(d),
        f"{prefix}.0.fn.to_out.weight": rand(d, d),
        f"{prefix}.0.fn.to_out.bias": torch.zeros(d),
        f"{prefix}.0.fn.fast_attention.projection_matrix": rand(16, d // 2),
        f"{prefix}.1.norm.weight": torch.ones(d),
        f"{prefix}.1.norm.bias": torch.zeros(d),
        f"{prefix}.1.fn.fn.w1.weight": rand(4 * d, d),
        f"{prefix}.1.fn.fn.w1.bias": torch.zeros(4 * d),
        f"{prefix}.1.fn.fn.w2.weight": rand(d, 4 * d),
        f"{prefix}.1.fn.fn.w2.bias": torch.zeros(d),
        "decoder.performer.calls_since_last_redraw": torch.tensor(0),
        "decoder.norm.weight": torch.ones(d),
        "decoder.norm.bias": torch.zeros(d),
        "decoder_embed.weight": rand(d, hidden),
        "decoder_embed.bias": torch.zeros(d),
        "norm.weight": torch.ones(d),
        "norm.bias": torch.zeros(d),
        "to_final.weight": rand(1, d),
        "to_final.bias": torch.zeros(1),
    }


def fabricate_checkpoint(
    folder: Path,
    *,
    hidden: int = 32,
    n_layers: int = 3,
    n_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write ``folder/models.ckpt`` and the gene list beside it; return the checkpoint path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    raw = _config_dict(hidden, n_layers, n_heads, decoder_hidden=16)
    config = ScFoundationConfig(
        seq_len=N_VOCAB + 2,
        bin_num=100,
        bin_alpha=1.0,
        pad_token_id=103,
        mask_token_id=102,
        hidden_dim=hidden,
        depth=n_layers,
        heads=n_heads,
    )
    checkpoint = {}
    for version in ("gene", "cell", "rde"):
        encoder = ScFoundationEncoder(config)
        state = dict(encoder.state_dict())
        state.update(_decoder_state(hidden, 16, generator))
        checkpoint[version] = {
            "config": raw,
            "state_dict": {f"model.{k}": v.clone() for k, v in state.items()},
            "demo_weights": True,
        }
    path = folder / CHECKPOINT_FILE
    torch.save(checkpoint, path)
    vocabulary = resources.files("scstrata_service") / "data" / VOCABULARY_FILE
    with vocabulary.open("rb") as src, open(folder / VOCABULARY_FILE, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path
