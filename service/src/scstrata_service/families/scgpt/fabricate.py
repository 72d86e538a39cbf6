"""Write a small scGPT release folder in the published layout.

RANDOM DEMO WEIGHTS. The folder has the real structure (``args.json`` with the release's
fields, ``vocab.json`` of gene symbols with ``<pad>``, ``<cls>``, ``<eoc>`` after the
genes, ``best_model.pt`` as a bare state dict under the official names, decoder, MVC
decoder and flag-encoder keys included) so the loader runs exactly as with a release, but
its numbers mean nothing biologically. ``args.json`` carries ``"demo_weights": true``, which
the service shows on the model card.

Gene symbols are real ones (the first genes of scFoundation's 19,264-gene list), so a demo
data set over them looks like one; the tensor names and shapes are written out here from
the published layout, not taken from the service's encoder, so a wrong module name in the
encoder fails its strict load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from scstrata_service.demo_weights import RandomTensors, gene_symbols
from scstrata_service.families.scgpt.checkpoint import ARGS, SPECIAL_TOKENS, VOCABULARY, WEIGHTS


def _args(hidden: int, n_layers: int, n_heads: int, d_hid: int, max_seq_len: int) -> dict:
    # the release's own fields (values of the whole-human run where they are not sizes)
    return {
        "data_source": "demo",
        "save_dir": "demo",
        "load_model": None,
        "n_hvg": None,
        "valid_size_or_ratio": 0.003,
        "dist_backend": "nccl",
        "grad_accu_steps": 1,
        "max_seq_len": max_seq_len,
        "do_train": True,
        "GEPC": True,
        "ecs_thres": 0.0,
        "dab_weight": 1.0,
        "lr": 0.0001,
        "batch_size": 32,
        "eval_batch_size": 64,
        "epochs": 6,
        "fp16": True,
        "fast_transformer": True,
        "nlayers": n_layers,
        "nheads": n_heads,
        "embsize": hidden,
        "d_hid": d_hid,
        "dropout": 0.2,
        "n_layers_cls": 3,
        "log_interval": 9000,
        "save_interval": 27000,
        "mask_ratio": 0.4,
        "pad_token": "<pad>",
        "input_style": "binned",
        "input_emb_style": "continuous",
        "n_bins": 51,
        "pad_value": -2,
        "mask_value": -1,
        "training_tasks": "both",
        "trunc_by_sample": True,
        "vocab_path": "vocab.json",
        "rank": 0,
        "world_size": 1,
        "distributed": False,
        "local_rank": 0,
        "demo_weights": True,
    }


def _weights(
    d: int, d_hid: int, n_layers: int, ntoken: int, generator: torch.Generator, attn_names: str
) -> dict[str, torch.Tensor]:
    r = RandomTensors(generator)
    linear, norm = r.linear, r.norm
    w = r.gene_value_encoders("encoder", "value_encoder", ntoken, d)
    for i in range(n_layers):
        p = f"transformer_encoder.layers.{i}"
        qkv = linear(f"{p}.self_attn.Wqkv", d, 3 * d)
        if attn_names == "in_proj":  # a model saved without flash-attn
            qkv = {k.replace("Wqkv.", "in_proj_"): v for k, v in qkv.items()}
        w |= qkv | linear(f"{p}.self_attn.out_proj", d, d)
        w |= linear(f"{p}.linear1", d, d_hid) | linear(f"{p}.linear2", d_hid, d)
        w |= norm(f"{p}.norm1", d) | norm(f"{p}.norm2", d)
    for j, (n_in, n_out) in zip((0, 2, 4), ((d, d), (d, d), (d, 1))):
        w |= linear(f"decoder.fc.{j}", n_in, n_out)
    w |= linear("mvc_decoder.gene2query", d, d) | linear("mvc_decoder.W", d, d, bias=False)
    return {k: v.contiguous() for k, v in w.items()}


def fabricate_checkpoint(
    folder: Path,
    *,
    hidden: int = 32,
    n_layers: int = 3,
    n_heads: int = 4,
    d_hid: int | None = None,
    n_genes: int = 500,
    max_seq_len: int = 1200,
    attn_names: str = "Wqkv",
    seed: int = 0,
) -> Path:
    """Write the release files into ``folder`` and return it.

    ``d_hid`` defaults to ``hidden`` (as whole-human: 512 / 512); ``attn_names`` is
    ``"Wqkv"`` (the release, trained with flash-attn) or ``"in_proj"`` (saved without it).
    """
    if attn_names not in ("Wqkv", "in_proj"):
        raise ValueError(f"attn_names must be 'Wqkv' or 'in_proj', not {attn_names!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    genes = gene_symbols(n_genes)
    ids = {gene: i for i, gene in enumerate(genes)}
    ids |= {token: len(genes) + j for j, token in enumerate(SPECIAL_TOKENS)}
    # key order in the file means nothing: write it shuffled so no reader relies on it
    order = np.random.default_rng(seed).permutation(len(ids))
    items = list(ids.items())
    (folder / VOCABULARY).write_text(json.dumps(dict(items[i] for i in order), indent=1))
    d_hid = d_hid or hidden
    (folder / ARGS).write_text(
        json.dumps(_args(hidden, n_layers, n_heads, d_hid, max_seq_len), indent=2)
    )
    generator = torch.Generator().manual_seed(seed)
    state = _weights(hidden, d_hid, n_layers, len(ids), generator, attn_names)
    torch.save(state, folder / WEIGHTS)
    return folder
