"""What every backend with a packed encoder shares: device and precision choice, the token
budget, pooling checks, host-to-device copies and batch orchestration.

A family supplies its card, tokenizer (``check`` / ``tokenize``) and encoder, and says in
:meth:`PackedBackend.forward_batch` how one packed batch goes through that encoder.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from scstrata_service.backend import ModelBackend, ModelCard, PooledLayers, TokenizedCells
from scstrata_service.packing import (
    COMPILE_ERRORS,
    PackedLayout,
    check_attention,
    default_attention,
    default_compile,
    default_max_tokens,
    embed_in_batches,
    gather_rows,
    pick_device,
)

log = logging.getLogger(__name__)

# One forward pass at a time per device: each pass's token budget assumes it has the
# accelerator's memory to itself (the service's dispatches also take the accelerator in turn,
# engine.py; this lock holds for library use from several threads too).
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def device_lock(device: torch.device) -> threading.Lock:
    with _LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(str(device), threading.Lock())


def compute_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 transformer blocks on GPU, fp32 on CPU; each family keeps its input embeddings
    in fp32."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def place_encoder(
    encoder: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    device: str | None,
    blocks: torch.nn.Module | None,
) -> torch.device:
    """Load the checkpoint's weights into ``encoder`` (every key must match), put it in eval
    mode on ``device`` (default: CUDA when present) and ``blocks`` in the compute dtype there;
    ``blocks=None`` keeps everything fp32 (a runtime other than torch runs the blocks)."""
    encoder.load_state_dict(state, strict=True)
    torch_device = pick_device(device)
    encoder.eval().to(torch_device)
    if blocks is not None:
        blocks.to(compute_dtype_for(torch_device))
    return torch_device


class PackedBackend(ModelBackend):
    def __init__(
        self,
        card: ModelCard,
        encoder: torch.nn.Module,
        tokenizer: Any,
        device: torch.device,
        max_tokens: int | None = None,
        attention: str | None = None,
        compile_blocks: bool | None = None,
    ):
        self.card, self.encoder, self.tokenizer, self.device = card, encoder, tokenizer, device
        self.compute_dtype = compute_dtype_for(device)
        self.max_tokens = max_tokens or default_max_tokens(device, card.hidden_size)
        self.attention = check_attention(attention or default_attention(device), device)
        # torch.compile fuses each block's residual adds into its norms around the attention
        # kernel: +3-5% on an H200 (bench/RESULTS.md), so on by default there; on CPU it was no
        # faster. The first batch compiles (see warm_up); a failure falls back to eager.
        if compile_blocks is None:
            compile_blocks = default_compile(device)
        encoder.compile_blocks = compile_blocks

    def check_input(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping[str, object]
    ) -> None:
        self.tokenizer.check(counts, genes, options)

    def tokenize(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping[str, object]
    ) -> TokenizedCells:
        return self.tokenizer.tokenize(counts, genes, options)

    def gene_columns(self, genes: Sequence[str]) -> np.ndarray:
        return self.tokenizer.map_genes(genes)[0]  # the tokenizer's own (remembered) lookup

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
            try:
                return gather_rows(self.forward_batch(batch, layout, layers, poolings))
            except COMPILE_ERRORS as err:
                if not self.encoder.compile_blocks:
                    raise
                # e.g. no C compiler for Triton on this host: serve eagerly instead of failing
                log.warning("%s: torch.compile failed (%s); running eagerly", self.card.name, err)
                self.encoder.compile_blocks = False
                return gather_rows(self.forward_batch(batch, layout, layers, poolings))

        with device_lock(self.device):
            return embed_in_batches(cells, self.max_tokens, forward)

    def warm_up(self) -> None:
        """One tiny embedding through the whole path, so that compiling (when on) happens at
        start-up rather than in the first request; dynamic shapes then serve every batch."""
        if not self.encoder.compile_blocks:
            return
        genes = self.known_genes()[:64]
        counts = sp.csr_matrix(np.full((2, len(genes)), 2.0))
        started = time.perf_counter()
        self.embed(
            self.tokenize(counts, genes, {}), [self.card.n_layers], [self.card.default_pooling]
        )
        log.info("%s: warmed up in %.1f s", self.card.name, time.perf_counter() - started)

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
