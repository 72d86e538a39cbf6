"""Geneformer behind the common backend interface."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from scstrata_service.backend import ModelBackend, ModelCard, PooledLayers, TokenizedCells
from scstrata_service.families.geneformer.checkpoint import (
    RELEASE_INPUT_SIZE,
    CheckpointError,
    load_bert,
    load_dictionaries,
    model_folder,
)
from scstrata_service.families.geneformer.encoder import GeneformerEncoder
from scstrata_service.families.geneformer.tokenizer import GeneformerOptions, GeneformerTokenizer
from scstrata_service.packing import (
    PackedLayout,
    default_attention,
    default_max_tokens,
    embed_in_batches,
    gather_rows,
    pick_device,
)

log = logging.getLogger(__name__)


class GeneformerBackend(ModelBackend):
    def __init__(
        self,
        card: ModelCard,
        encoder: GeneformerEncoder,
        tokenizer: GeneformerTokenizer,
        device: torch.device,
        max_tokens: int | None = None,
        attention: str | None = None,
    ):
        self.card, self.encoder, self.tokenizer, self.device = card, encoder, tokenizer, device
        self.version = tokenizer.version
        # bf16 blocks on GPU (embedding tables and layer 0 stay fp32); fp32 on CPU
        self.compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.max_tokens = max_tokens or default_max_tokens(device, card.hidden_size)
        self.attention = attention or default_attention(device)

    @classmethod
    def load(
        cls,
        name: str,
        path: Path,
        *,
        device: str | None = None,
        max_tokens: int | None = None,
        attention: str | None = None,
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
        encoder.load_state_dict(weights.state, strict=True)
        torch_device = pick_device(device)
        encoder.eval().to(torch_device)
        if torch_device.type == "cuda":
            encoder.encoder.to(torch.bfloat16)
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
        return cls(card, encoder, tokenizer, torch_device, max_tokens, attention)

    def known_genes(self) -> list[str]:
        return list(self.tokenizer.genes)

    def check_input(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping[str, object]
    ) -> None:
        self.tokenizer.check(counts, genes, options)

    def tokenize(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping[str, object]
    ) -> TokenizedCells:
        return self.tokenizer.tokenize(counts, genes, options)

    def embed(
        self, cells: TokenizedCells, layers: Sequence[int], poolings: Sequence[str]
    ) -> PooledLayers:
        unknown = set(poolings) - set(self.card.poolings)
        if unknown:
            raise ValueError(
                f"unknown pooling(s) {sorted(unknown)}; choose from {sorted(self.card.poolings)}"
            )
        return embed_in_batches(
            cells, self.max_tokens, lambda batch: self._forward(batch, layers, poolings)
        )

    def _forward(
        self, batch: TokenizedCells, layers: Sequence[int], poolings: Sequence[str]
    ) -> PooledLayers:
        ids = torch.from_numpy(np.ascontiguousarray(batch.positions, dtype=np.int64))
        if self.device.type == "cuda":
            ids = ids.pin_memory()
        pooled = self.encoder.forward_pooled(
            ids.to(self.device, non_blocking=True),
            PackedLayout.from_offsets(np.asarray(batch.offsets), self.device),
            layers,
            poolings,
            self.attention,
            has_special_tokens=self.tokenizer.special,
            compute_dtype=self.compute_dtype,
        )
        return gather_rows(pooled)
