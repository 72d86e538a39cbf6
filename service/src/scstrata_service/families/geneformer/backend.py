"""Geneformer behind the common backend interface."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from scstrata_service.backend import ModelCard, TokenizedCells
from scstrata_service.families.geneformer.checkpoint import (
    RELEASE_INPUT_SIZE,
    CheckpointError,
    load_bert,
    load_dictionaries,
    model_folder,
)
from scstrata_service.families.geneformer.encoder import GeneformerEncoder
from scstrata_service.families.geneformer.tokenizer import GeneformerOptions, GeneformerTokenizer
from scstrata_service.packed_backend import PackedBackend, place_encoder
from scstrata_service.packing import PackedLayout

log = logging.getLogger(__name__)


class GeneformerBackend(PackedBackend):
    @property
    def version(self) -> str:
        return self.tokenizer.version

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
        token_dictionary: str | None = None,
        gene_median_file: str | None = None,
        gene_mapping_file: str | None = None,
        model_input_size: int | None = None,
    ) -> GeneformerBackend:
        folder = model_folder(Path(path))
        dictionaries = load_dictionaries(
            folder, token_dictionary, gene_median_file, gene_mapping_file
        )
        weights = load_bert(folder)
        config = weights.config
        positions = int(config.max_position_embeddings)
        # upstream pretraining sets vocab_size = len(token dictionary)
        largest_id = max(
            max(dictionaries.gene_tokens.values()), max(dictionaries.special.values(), default=0)
        )
        vocab_size = int(config.vocab_size)
        if dictionaries.n_tokens != vocab_size or largest_id >= vocab_size:
            raise CheckpointError(
                f"{folder}: {dictionaries.files['token_dictionary']} has {dictionaries.n_tokens} "
                f"tokens (largest id {largest_id}) but the model's vocab_size is {vocab_size}: "
                "dictionary and weights belong to different releases"
            )
        input_size = int(model_input_size or positions)
        if input_size > positions:
            raise CheckpointError(
                f"model_input_size {input_size} exceeds the model's max_position_embeddings "
                f"{positions}"
            )
        if input_size != RELEASE_INPUT_SIZE[dictionaries.version]:
            log.warning(
                "%s: %s dictionary with input size %d (the %s releases use %d)",
                name,
                dictionaries.version,
                input_size,
                dictionaries.version,
                RELEASE_INPUT_SIZE[dictionaries.version],
            )

        encoder = GeneformerEncoder(config)
        torch_device = place_encoder(encoder, weights.state, device, encoder.encoder)
        dim = encoder.hidden_size
        poolings = {"official": dim, "mean": dim}
        if dictionaries.cls_id is not None:
            poolings["cls"] = dim
        card = ModelCard(
            name=name,
            family="geneformer",
            n_layers=encoder.n_layers,
            hidden_size=dim,
            poolings=poolings,
            gene_id_kind="ensembl",
            vocab_size=len(dictionaries.gene_tokens),
            checkpoint_digest=weights.digest,
            demo_weights=weights.demo_weights,
            options={k: f.description or "" for k, f in GeneformerOptions.model_fields.items()},
        )
        tokenizer = GeneformerTokenizer(dictionaries, input_size)
        log.info(
            "%s: Geneformer %s, %d layers x %d, input size %d, %s, %s",
            name,
            dictionaries.version,
            encoder.n_layers,
            dim,
            input_size,
            weights.weights_name,
            ", ".join(dictionaries.files.values()),
        )
        return cls(card, encoder, tokenizer, torch_device, max_tokens, attention, compile_blocks)

    def known_genes(self) -> list[str]:
        return list(self.tokenizer.genes)

    def forward_batch(
        self,
        batch: TokenizedCells,
        layout: PackedLayout,
        layers: Sequence[int],
        poolings: Sequence[str],
    ) -> dict[str, dict[int, torch.Tensor]]:
        return self.encoder.forward_pooled(
            self.to_device(batch.positions.astype(np.int64, copy=False)),  # token ids
            layout,
            layers,
            poolings,
            self.attention,
            has_special_tokens=self.tokenizer.special,
            compute_dtype=self.compute_dtype,
        )
