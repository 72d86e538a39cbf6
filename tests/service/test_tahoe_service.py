"""A real server (`scstrata serve --model tx=tahoe:FOLDER`) serves Tahoe-X1 like in-process."""

from __future__ import annotations

import json

import httpx
import numpy as np

from scstrata_service.families import tahoe
from scstrata_service.families.tahoe.fabricate import fabricate_checkpoint
from scstrata_service.launcher import running_service

from helpers import assert_served_like_in_process, embed_item, sparse_counts


def test_the_server_lists_the_card_and_embeds_every_layer_like_in_process(tmp_path):
    folder = fabricate_checkpoint(tmp_path / "tx", max_length=32)
    vocab = json.loads((folder / "vocab.json").read_text())
    rng = np.random.default_rng(21)
    genes = list(rng.choice([g for g in vocab if not g.startswith("<")], 120, replace=False))
    genes.append("ENSG99999999999")
    counts = sparse_counts(rng, 7, len(genes), rate=1.5, density=0.3)
    local = tahoe.load("tx", folder)
    with running_service([f"tx=tahoe:{folder}"]) as url:
        (card,) = httpx.get(f"{url}/models", timeout=10).json()
        assert card["name"] == "tx" and card["family"] == "tahoe" and card["n_layers"] == 3
        assert card["gene_id_kind"] == "ensembl" and card["demo_weights"] is True
        assert card["poolings"] == {"official": 32, "cls": 32, "mean": 32}
        cases = (("official", {}), ("mean", {"subsample": "top"}))
        assert_served_like_in_process(url, local, "tx", counts, genes, cases, ["ENSG99999999999"])
        symbols = embed_item(counts, [f"GENE{i}" for i in range(len(genes))], model="tx")
        reply = httpx.post(f"{url}/embed", json={"items": [symbols]}, timeout=30)
        assert reply.status_code == 400 and "the names look like symbols" in reply.text
