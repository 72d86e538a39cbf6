"""scFoundation (docs/models.md): the official ``models.ckpt`` with its 19,264-gene list."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from scstrata_service.contract import CheckpointError, ModelCard
from scstrata_service.families.scfoundation.checkpoint import load_checkpoint, load_vocabulary
from scstrata_service.families.scfoundation.encoder import ScFoundationEncoder
from scstrata_service.families.scfoundation.fabricate import fabricate_checkpoint
from scstrata_service.families.scfoundation.tokenizer import (
    ScFoundationOptions,
    ScFoundationTokenizer,
)
from scstrata_service.runtime.backend import PackedBackend
from scstrata_service.runtime.device import DevicePolicy

RUNTIMES = ("torch", "onnx")


def load(
    name: str,
    path: Path,
    *,
    version: str = "cell",
    runtime: str = "torch",
    onnx_cache_dir: str | Path | None = None,
    **device: object,
) -> PackedBackend:
    """``version``: the sub-checkpoint (cell, gene, rde); ``runtime="onnx"`` runs the blocks
    in ONNX Runtime (onnx_runtime.py), graphs cached in ``onnx_cache_dir`` (default: a temp
    folder keyed by checkpoint digest); ``device``: runtime/device.py's settings."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    ckpt = load_checkpoint(Path(path), version)
    vocabulary = load_vocabulary(Path(path))
    config = ckpt.config
    if len(vocabulary) + 2 > config.seq_len:
        raise CheckpointError(
            f"{path}: {len(vocabulary)} genes + T + S exceed the checkpoint's seq_len "
            f"{config.seq_len}"
        )
    dim = config.hidden_dim
    policy = DevicePolicy.choose(dim, **device)
    encoder = ScFoundationEncoder(config)
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
        final_norm=True,
        options=ScFoundationOptions.describe(),
    )
    tokenizer = ScFoundationTokenizer(vocabulary)
    if runtime == "torch":
        policy.place(encoder, ckpt.encoder_state, encoder.encoder)
        return PackedBackend(card, tokenizer, encoder, policy)

    from scstrata_service.families.scfoundation.onnx_runtime import OnnxBlocks, default_cache_dir

    policy = replace(policy, compute_dtype=torch.float32, compile_blocks=False)  # fp32 graphs
    policy.place(encoder, ckpt.encoder_state, None)
    # "-prenorm": graphs cached before the final norm moved to torch ended with it
    key = f"{ckpt.digest.split(':')[-1][:16]}-{version}-prenorm"
    cache = Path(onnx_cache_dir) / key if onnx_cache_dir else default_cache_dir(key)
    return PackedBackend(
        card, tokenizer, encoder, policy, OnnxBlocks(encoder.encoder, policy.device, cache)
    )


def fabricate(folder: Path, *, hidden: int, n_layers: int, n_heads: int, seed: int) -> Path:
    fabricate_checkpoint(folder, hidden=hidden, n_layers=n_layers, n_heads=n_heads, seed=seed)
    return Path(folder)
