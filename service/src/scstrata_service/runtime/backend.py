"""The served model for any family: its tokenizer and encoder modules on the shared runtime.

A family's ``load()`` builds a :class:`PackedBackend` from its card, tokenizer, encoder and
the device policy; everything after (batching, the forward pass, the compile fallback, the
copy to the host) is the same for every family.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from scstrata_service.contract import (
    FamilyOptions,
    ModelBackend,
    ModelCard,
    PackedEncoder,
    PooledLayers,
    TokenizedCells,
    Tokenizer,
)
from scstrata_service.layers import Readout
from scstrata_service.runtime.batching import embed_in_batches
from scstrata_service.runtime.compile import COMPILE_ERRORS
from scstrata_service.runtime.device import DevicePolicy, device_lock, to_host
from scstrata_service.runtime.forward import BlockRunner, forward

log = logging.getLogger(__name__)


class PackedBackend(ModelBackend):
    def __init__(
        self,
        card: ModelCard,
        tokenizer: Tokenizer,
        encoder: PackedEncoder,
        policy: DevicePolicy,
        blocks: BlockRunner | None = None,
    ):
        """``blocks``: another runtime for the blocks (default: the encoder's, in torch)."""
        self.card, self.tokenizer, self.encoder = card, tokenizer, encoder
        self.policy = policy
        self.blocks = blocks

    @property
    def device(self):
        return self.policy.device

    @property
    def max_tokens(self) -> int:  # type: ignore[override]
        return self.policy.max_tokens

    def known_genes(self) -> list[str]:
        return self.tokenizer.known_genes()

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

    def parse_options(self, options: Mapping[str, object]) -> FamilyOptions:
        return self.tokenizer.options.parse(options)

    def read(self, cells: TokenizedCells, readout: Readout) -> PooledLayers:
        def one_pass(batch: TokenizedCells) -> PooledLayers:
            try:
                return to_host(forward(self.encoder, batch, readout, self.policy, self.blocks))
            except COMPILE_ERRORS as err:
                if not self.policy.compile_blocks:
                    raise
                # e.g. no C compiler for Triton on this host: serve eagerly instead of failing
                log.warning("%s: torch.compile failed (%s); running eagerly", self.card.name, err)
                self.policy = self.policy.eager()
                return to_host(forward(self.encoder, batch, readout, self.policy, self.blocks))

        with device_lock(self.device):
            return embed_in_batches(cells, self.policy.max_tokens, one_pass)

    def warm_up(self) -> None:
        """One tiny embedding through the whole path, so that compiling (when on) happens at
        start-up rather than in the first request; dynamic shapes then serve every batch."""
        if not self.policy.compile_blocks:
            return
        genes = self.known_genes()[:64]
        counts = sp.csr_matrix(np.full((2, len(genes)), 2.0))
        started = time.perf_counter()
        self.embed(
            self.tokenize(counts, genes, {}), [self.card.n_layers], [self.card.default_pooling]
        )
        log.info("%s: warmed up in %.1f s", self.card.name, time.perf_counter() - started)
