"""Write a small Tahoe-X1 release folder in the published Hugging Face layout.

RANDOM DEMO WEIGHTS. The folder has the real structure (``model_config.yml``,
``collator_config.yml``, ``vocab.json`` keyed by Ensembl-like ids with the special tokens,
``model.safetensors`` with ``model.``-prefixed ``TXModel`` names, decoder, flag and, when
asked, chemical-encoder keys) so the loader is exercised exactly as with a release, but its
numbers mean nothing biologically. ``model_config.yml`` carries ``demo_weights: true`` and
the service puts it on the model card.

The weight names and shapes are written out here from the published layout, not taken from
the service's encoder, so a wrong module name in the encoder fails its strict load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml

from scstrata_service.demo_weights import RandomTensors
from scstrata_service.families.tahoe.checkpoint import (
    COLLATOR_CONFIG,
    COMPOSER,
    MODEL_CONFIG,
    SAFETENSORS,
    VOCABULARY,
)

N_DRUGS, FP_DIM = 6, 16


def ensembl_like_ids(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct made-up human Ensembl gene ids (ENSG + 11 digits), sorted."""
    rng = np.random.default_rng(seed)
    numbers = np.sort(rng.choice(np.arange(1_000, 300_000), size=n, replace=False))
    return [f"ENSG{k:011d}" for k in numbers]


def _vocabulary(genes: Sequence[str], use_chem_token: bool) -> dict[str, int]:
    # genes first, special tokens after them: the loader must look specials up, not assume ids
    vocab = {g: i for i, g in enumerate(genes)}
    for token in ["<pad>", "<cls>", "<eoc>"] + (["<drug>"] if use_chem_token else []):
        vocab[token] = len(vocab)
    return vocab


def _model_config(
    d_model: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int | None,
    vocab_size: int,
    activation: str,
    value_activation: str,
    expansion_ratio: int,
    cell_emb_style: str,
    use_chem_token: bool,
) -> dict:
    if n_kv_heads is None:
        # the training YAMLs spell it `kv_nheads`, a key the official code does not read
        attn = {"kv_nheads": n_heads}
    else:
        attn = {"kv_n_heads": n_kv_heads}
    config = {
        "name": "tahoe_x1",
        "d_model": d_model,
        "n_layers": n_layers,
        "init_device": "cpu",
        "expansion_ratio": expansion_ratio,
        "standard_scale_outputs": False,
        "transformer_activation": activation,
        "n_heads": n_heads,
        "norm_scheme": "pre",
        "use_generative_training": True,
        "use_cell_conditioned_generation": False,
        "use_glu": False,
        "cell_emb_style": cell_emb_style,
        "attn_config": {
            "attn_impl": "flash",
            "use_attn_mask": False,
            "attn_type": "grouped_query_attention",
            "attn_pdrop": 0.0,
            **attn,
        },
        "norm_config": {"norm_type": "layernorm", "eps": 1.0e-5},
        "expression_encoder": {
            "input_emb_style": "continuous",
            "dropout": 0.1,
            "max_value": 512,
            "activation": value_activation,
            "use_norm": True,
        },
        "gene_encoder": {"use_norm": True},
        "mvc": {"arch_style": "inner product", "query_activation": "sigmoid"},
        "expression_decoder": {"n_outputs": 1, "n_layers": 1, "activation": "leaky_relu"},
        "vocab_size": vocab_size,
        "precision": "amp_bf16",
        "demo_weights": True,
    }
    if use_chem_token:
        config["chemical_encoder"] = {"activation": "gelu", "padding_idx": 0, "freeze": False}
    return config


def _collator_config(
    pad_token_id: int,
    max_length: int,
    keep_first_n_tokens: int,
    do_binning: bool,
    log_transform: bool,
    use_chem_token: bool,
) -> dict:
    config = {
        "do_padding": True,
        "pad_value": -2,
        "do_mlm": True,
        "do_binning": do_binning,
        "log_transform": log_transform,
        "target_sum": 10_000,
        "mlm_probability": 0.5,
        "mask_value": -1,
        "max_length": max_length,
        "sampling": True,
        "data_style": "both",
        "num_bins": 51,
        "right_binning": False,
        "use_junk_tokens": False,
        "pad_token_id": pad_token_id,
        "keep_first_n_tokens": keep_first_n_tokens,
    }
    if use_chem_token:
        config["use_chem_token"] = True
        config["drug_to_id_path"] = {"remote": "s3://example/drug_to_id.json", "local": "d.json"}
    return config


def _weights(
    d: int,
    n_layers: int,
    kv_width: int,
    vocab_size: int,
    hidden: int,
    use_chem_token: bool,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    r = RandomTensors(generator)
    linear, norm = r.linear, r.norm
    w = r.gene_value_encoders("gene_encoder", "expression_encoder", vocab_size, d)
    for i in range(n_layers):
        p = f"transformer_encoder.layers.{i}"
        w |= linear(f"{p}.self_attn.Wqkv", d, d + 2 * kv_width)
        w |= linear(f"{p}.self_attn.out_proj", d, d)
        w |= linear(f"{p}.up_proj", d, hidden) | linear(f"{p}.down_proj", hidden, d)
        w |= norm(f"{p}.norm1", d) | norm(f"{p}.norm2", d)
    w |= norm("transformer_encoder.norm", d)
    w |= linear("expression_decoder.linear_layers.0", d, d)
    w |= linear("expression_decoder.out_proj", d, 1)
    w |= linear("mvc_decoder.gene2query", d, d) | linear("mvc_decoder.W", d, d, bias=False)
    if use_chem_token:
        w["chem_encoder.embedding.weight"] = r.randn(N_DRUGS, FP_DIM)
        w |= linear("chem_encoder.fc", FP_DIM, d) | linear("chem_encoder.proj", d, d)
        w |= norm("chem_encoder.norm", d)
    return {f"model.{k}": v.contiguous() for k, v in w.items()}


def fabricate_checkpoint(
    folder: Path,
    *,
    hidden: int = 32,
    n_layers: int = 3,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    vocab_genes: int | Sequence[str] = 500,
    activation: str = "relu",
    value_activation: str = "relu",
    expansion_ratio: int = 4,
    max_length: int = 64,
    keep_first_n_tokens: int = 1,
    do_binning: bool = True,
    log_transform: bool = False,
    use_chem_token: bool = False,
    cell_emb_style: str = "cls",
    weights_format: str = "safetensors",
    seed: int = 0,
) -> Path:
    """Write the release files into ``folder`` and return it.

    ``n_kv_heads=None`` writes a plain multi-head config (kv heads = heads); ``vocab_genes`` is
    a gene id list or how many Ensembl-like ids to make up; ``weights_format`` is
    ``"safetensors"`` (Hugging Face release) or ``"composer"`` (``best-model.pt``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    genes = ensembl_like_ids(vocab_genes, seed) if isinstance(vocab_genes, int) else vocab_genes
    vocab = _vocabulary(list(genes), use_chem_token)
    kv_width = (n_kv_heads or n_heads) * (hidden // n_heads)
    model_config = _model_config(
        hidden,
        n_layers,
        n_heads,
        n_kv_heads,
        len(vocab),
        activation,
        value_activation,
        expansion_ratio,
        cell_emb_style,
        use_chem_token,
    )
    collator_config = _collator_config(
        vocab["<pad>"], max_length, keep_first_n_tokens, do_binning, log_transform, use_chem_token
    )
    (folder / MODEL_CONFIG).write_text(yaml.safe_dump(model_config, sort_keys=False))
    (folder / COLLATOR_CONFIG).write_text(yaml.safe_dump(collator_config, sort_keys=False))
    (folder / VOCABULARY).write_text(json.dumps(vocab, indent=2))
    state = _weights(
        hidden,
        n_layers,
        kv_width,
        len(vocab),
        hidden * expansion_ratio,
        use_chem_token,
        torch.Generator().manual_seed(seed),
    )
    if weights_format == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / SAFETENSORS), metadata={"format": "pt"})
    elif weights_format == "composer":
        torch.save({"state": {"model": state, "timestamp": {"epoch": 1}}}, folder / COMPOSER)
    else:
        raise ValueError(
            f"weights_format must be 'safetensors' or 'composer', not {weights_format!r}"
        )
    return folder
