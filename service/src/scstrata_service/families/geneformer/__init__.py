"""Geneformer (docs/models.md): a Hugging Face BERT folder with its gene dictionaries."""

from __future__ import annotations

import logging
from pathlib import Path

from scstrata_service.contract import CheckpointError, ModelCard
from scstrata_service.families.geneformer.checkpoint import (
    RELEASE_INPUT_SIZE,
    load_bert,
    load_dictionaries,
    model_folder,
)
from scstrata_service.families.geneformer.encoder import GeneformerEncoder
from scstrata_service.families.geneformer.fabricate import fabricate_checkpoint
from scstrata_service.families.geneformer.tokenizer import GeneformerOptions, GeneformerTokenizer
from scstrata_service.runtime.backend import PackedBackend
from scstrata_service.runtime.device import DevicePolicy

log = logging.getLogger(__name__)


def load(
    name: str,
    path: Path,
    *,
    token_dictionary: str | None = None,
    gene_median_file: str | None = None,
    gene_mapping_file: str | None = None,
    model_input_size: int | None = None,
    **device: object,
) -> PackedBackend:
    """The dictionaries default to the files beside the weights; ``model_input_size`` to the
    model's ``max_position_embeddings``; ``device``: runtime/device.py's settings."""
    folder = model_folder(Path(path))
    dictionaries = load_dictionaries(folder, token_dictionary, gene_median_file, gene_mapping_file)
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
            f"model_input_size {input_size} exceeds the model's max_position_embeddings {positions}"
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

    tokenizer = GeneformerTokenizer(dictionaries, input_size)
    encoder = GeneformerEncoder(config, special_tokens=tokenizer.special)
    policy = DevicePolicy.choose(encoder.hidden_size, **device)
    policy.place(encoder, weights.state, encoder.encoder)
    dim = encoder.hidden_size
    poolings = {"official": dim, "mean": dim}
    if tokenizer.special:
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
        final_norm=False,
        options=GeneformerOptions.describe(),
    )
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
    return PackedBackend(card, tokenizer, encoder, policy)


def fabricate(folder: Path, *, hidden: int, n_layers: int, n_heads: int, seed: int) -> Path:
    return fabricate_checkpoint(
        folder, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_genes=4000, seed=seed
    )
