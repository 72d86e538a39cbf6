"""Opt-in: the service against the official Tahoe-X1 modules (skipped unless configured).

The official package needs composer and llm-foundry, which cannot be installed beside this
project's torch. PyPI `helical` ships a composer-free copy of the same modules
(`helical/models/tahoe/tahoe_x1/`). To run this check:

    pip download --no-deps helical -d /tmp/helical && unzip -q /tmp/helical/*.whl -d /tmp/helical
    python3 -m venv /tmp/tx-venv  # torch, transformers, scipy, safetensors + the four below
    /tmp/tx-venv/bin/pip install torch transformers scipy safetensors einops omegaconf \
        catalogue torchmetrics
    TAHOE_OFFICIAL_PYTHON=/tmp/tx-venv/bin/python TAHOE_HELICAL_ROOT=/tmp/helical \
        pytest tests/service/test_tahoe_official.py

The test imports only the model, tokenizer and data modules of that copy (not helical's
package root), with a stub for the flash-attn padding helpers the module imports but the
`torch` attention path does not need. Cells run one per batch (no padding), fp32, CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from scstrata_service.families import tahoe
from scstrata_service.families.tahoe.fabricate import fabricate_checkpoint

PYTHON = os.environ.get("TAHOE_OFFICIAL_PYTHON")
ROOT = os.environ.get("TAHOE_HELICAL_ROOT")
pytestmark = pytest.mark.skipif(
    not (PYTHON and ROOT), reason="set TAHOE_OFFICIAL_PYTHON and TAHOE_HELICAL_ROOT"
)

STUB = """
import torch


def unpad_input(hidden_states, attention_mask):
    lengths = attention_mask.sum(-1, dtype=torch.int32)
    index = torch.nonzero(attention_mask.flatten()).flatten()
    cumulative = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])[index]
    return flat, index, cumulative, int(lengths.max()), lengths
"""

DRIVER = """
import sys
import numpy as np
import scipy.sparse as sp
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from helical.models.tahoe.tahoe_x1.data import CountDataset, DataCollator
from helical.models.tahoe.tahoe_x1.model import TXModel
from helical.models.tahoe.tahoe_x1.tokenizer import GeneVocab

folder, inputs, output = sys.argv[1:4]
data = np.load(inputs)
vocab = GeneVocab.from_file(f"{folder}/vocab.json")
model_cfg = OmegaConf.load(f"{folder}/model_config.yml")
coll_cfg = OmegaConf.load(f"{folder}/collator_config.yml")
model_cfg.attn_config.attn_impl, model_cfg.attn_config.use_attn_mask = "torch", False
model_cfg.do_mlm, model_cfg.return_gene_embeddings = False, True
strict = True
if coll_cfg.get("use_chem_token", False):  # as the official loaders do without chem inference
    coll_cfg.use_chem_token = False
    del model_cfg["chemical_encoder"], coll_cfg["drug_to_id_path"]
    strict = False
state = {k.removeprefix("model."): v for k, v in load_file(f"{folder}/model.safetensors").items()}
model = TXModel(model_config=model_cfg, collator_config=coll_cfg)
model.load_state_dict(state, strict=strict)
model.eval()
counts = sp.csr_matrix(
    (data["data"], data["indices"], data["indptr"]), shape=tuple(data["shape"])
)
dataset = CountDataset(counts, data["gene_ids"], cls_token_id=vocab["<cls>"],
                       pad_value=coll_cfg.pad_value)
collate = DataCollator(
    vocab=vocab, pad_token_id=coll_cfg.pad_token_id, pad_value=coll_cfg.pad_value,
    do_mlm=False, do_binning=coll_cfg.get("do_binning", True),
    log_transform=coll_cfg.get("log_transform", False), target_sum=coll_cfg.get("target_sum"),
    mlm_probability=coll_cfg.mlm_probability, mask_value=coll_cfg.mask_value,
    max_length=100_000, sampling=True, num_bins=coll_cfg.get("num_bins", 51),
    right_binning=coll_cfg.get("right_binning", False),
    keep_first_n_tokens=coll_cfg.get("keep_first_n_tokens", 1), use_chem_token=False,
)
states = {}
encoder = model.transformer_encoder
encoder.register_forward_pre_hook(
    lambda m, a, kw: states.__setitem__(0, kw["total_embs"][0]), with_kwargs=True
)
for i, layer in enumerate(encoder.layers):
    layer.register_forward_hook(lambda m, a, o, i=i: states.__setitem__(i + 1, o[0]))
result = {}
with torch.no_grad():
    for c in range(len(dataset)):
        batch = collate([dataset[c]])
        genes = batch["gene"]
        out = model(genes=genes, values=batch["expr"], gen_masks=batch["gen_mask"],
                    key_padding_mask=~genes.eq(coll_cfg.pad_token_id), skip_decoders=True)
        states[len(encoder.layers)] = out["gene_emb"][0]
        result[f"genes_{c}"], result[f"values_{c}"] = genes[0].numpy(), batch["expr"][0].numpy()
        result[f"cell_emb_{c}"] = out["cell_emb"][0].numpy()
        for k, x in states.items():
            result[f"layer{k}_{c}"] = x.numpy()
np.savez(output, **result)
"""


def _shim(tmp: Path) -> Path:
    shim = tmp / "shim"
    package = shim / "helical" / "models" / "tahoe"
    package.mkdir(parents=True)
    for folder in (shim / "helical", shim / "helical" / "models", package):
        (folder / "__init__.py").write_text("")
    (package / "tahoe_x1").symlink_to(Path(ROOT) / "helical" / "models" / "tahoe" / "tahoe_x1")
    (shim / "flash_attn").mkdir()
    (shim / "flash_attn" / "__init__.py").write_text("")
    (shim / "flash_attn" / "bert_padding.py").write_text(STUB)
    return shim


@pytest.mark.parametrize(
    "variant",
    [
        {},
        dict(activation="gelu", value_activation="gelu"),
        dict(n_heads=4, n_kv_heads=2),
        dict(use_chem_token=True, keep_first_n_tokens=2),
        dict(do_binning=False, log_transform=True),
        dict(cell_emb_style="avg-pool"),
    ],
    ids=["relu", "gelu", "gqa", "3b-style", "log-transform", "avg-pool"],
)
def test_tokens_and_every_layer_equal_the_official_modules(tmp_path, variant):
    folder = fabricate_checkpoint(tmp_path / "tx", **variant)
    vocab = json.loads((folder / "vocab.json").read_text())
    rng = np.random.default_rng(1)
    genes = list(rng.choice([g for g in vocab if not g.startswith("<")], 200, replace=False))
    dense = rng.poisson(2.0, (5, 200)) * (rng.random((5, 200)) < rng.uniform(0.1, 0.4, (5, 1)))
    dense[:, 0] += 1
    counts = sp.csr_matrix(dense.astype(np.float32))
    np.savez(
        tmp_path / "in.npz",
        data=counts.data,
        indices=counts.indices,
        indptr=counts.indptr,
        shape=counts.shape,
        gene_ids=np.array([vocab[g] for g in genes]),
    )
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(_shim(tmp_path))}
    run = [PYTHON, tmp_path / "driver.py", folder, tmp_path / "in.npz", tmp_path / "out.npz"]
    subprocess.run(run, check=True, env=env, cwd=tmp_path, timeout=300)
    official = np.load(tmp_path / "out.npz")

    backend = tahoe.load("tx", folder)
    tokens = backend.tokenize(counts, genes, {"max_length": 100_000})
    pooled = backend.embed(tokens, range(4), ["official", "cls", "mean"])
    style = variant.get("cell_emb_style", "cls")
    for c in range(counts.shape[0]):
        s, e = tokens.offsets[c], tokens.offsets[c + 1]
        np.testing.assert_array_equal(tokens.token_ids[s:e], official[f"genes_{c}"])
        np.testing.assert_array_equal(tokens.values[s:e], official[f"values_{c}"])
        cell = official[f"cell_emb_{c}"]
        np.testing.assert_allclose(pooled["official"][3][c], cell / np.linalg.norm(cell), atol=1e-5)
        for k in range(4):
            x = official[f"layer{k}_{c}"].astype(np.float64)
            vector = x[0] if style == "cls" else x.mean(0)
            expected = {
                "cls": x[0],
                "mean": x[1:].mean(0),
                "official": vector / np.linalg.norm(vector),
            }
            for pooling, value in expected.items():
                np.testing.assert_allclose(pooled[pooling][k][c], value, atol=1e-5, rtol=1e-5)
