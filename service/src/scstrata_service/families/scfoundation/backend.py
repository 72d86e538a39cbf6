"""scFoundation behind the common backend interface."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from scstrata_service.backend import ModelCard, TokenizedCells
from scstrata_service.families.scfoundation.checkpoint import load_checkpoint, load_vocabulary
from scstrata_service.families.scfoundation.encoder import ScFoundationEncoder
from scstrata_service.families.scfoundation.tokenizer import (
    ScFoundationOptions,
    ScFoundationTokenizer,
)
from scstrata_service.packed_backend import PackedBackend, place_encoder
from scstrata_service.packing import PackedLayout

RUNTIMES = ("torch", "onnx")


class ScFoundationBackend(PackedBackend):
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
        compile_blocks: bool | None = None,
        runtime: str = "torch",
        onnx_cache_dir: str | Path | None = None,
    ) -> ScFoundationBackend:
        """``runtime="onnx"`` runs the blocks in ONNX Runtime (onnx_runtime.py); graphs are
        cached in ``onnx_cache_dir`` (default: a temp folder keyed by checkpoint digest)."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        ckpt = load_checkpoint(Path(path), version)
        vocabulary = load_vocabulary(Path(path))
        config = ckpt.config
        if len(vocabulary) + 2 > config.seq_len:
            raise ValueError(
                f"{path}: {len(vocabulary)} genes + T + S exceed the checkpoint's seq_len "
                f"{config.seq_len}"
            )
        encoder = ScFoundationEncoder(config)
        blocks = encoder.encoder if runtime == "torch" else None  # ONNX Runtime: fp32
        torch_device = place_encoder(encoder, ckpt.encoder_state, device, blocks)
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
        args = (
            card,
            encoder,
            ScFoundationTokenizer(vocabulary),
            torch_device,
            max_tokens,
            attention,
            compile_blocks,
        )
        if runtime == "onnx":
            from scstrata_service.families.scfoundation.onnx_runtime import (
                OnnxScFoundationBackend,
                default_cache_dir,
            )

            key = f"{ckpt.digest.split(':')[-1][:16]}-{version}"
            cache = Path(onnx_cache_dir) / key if onnx_cache_dir else default_cache_dir(key)
            return OnnxScFoundationBackend(*args, cache_dir=cache)
        return cls(*args)

    def known_genes(self) -> list[str]:
        return list(self.tokenizer.vocabulary)

    def forward_batch(
        self,
        batch: TokenizedCells,
        layout: PackedLayout,
        layers: Sequence[int],
        poolings: Sequence[str],
    ) -> dict[str, dict[int, torch.Tensor]]:
        return self.encoder.forward_pooled(
            self.to_device(batch.values),
            self.to_device(batch.positions),
            layout,
            layers,
            poolings,
            self.attention,
            self.compute_dtype,
        )
