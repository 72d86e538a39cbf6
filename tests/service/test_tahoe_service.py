"""A real server (`scstrata serve --model tx=tahoe:FOLDER`) serves Tahoe-X1 like in-process."""

from __future__ import annotations

import json

import httpx
import numpy as np
import scipy.sparse as sp

from scstrata_service.families import tahoe
from scstrata_service.families.tahoe.fabricate import fabricate_checkpoint
from scstrata_service.launcher import running_service

from helpers import embed_item

TOL = dict(rtol=1e-5, atol=1e-5)


def test_the_server_lists_the_card_and_embeds_every_layer_like_in_process(tmp_path):
    folder = fabricate_checkpoint(tmp_path / "tx", max_length=32)
    vocab = json.loads((folder / "vocab.json").read_text())
    rng = np.random.default_rng(21)
    genes = list(rng.choice([g for g in vocab if not g.startswith("<")], 120, replace=False))
    genes.append("ENSG99999999999")
    dense = rng.poisson(1.5, (7, len(genes))) * (rng.random((7, len(genes))) < 0.3)
    dense[:, 0] += 1
    counts = sp.csr_matrix(dense.astype(np.float64))
    local = tahoe.load("tx", folder)
    with running_service([f"tx=tahoe:{folder}"]) as url:
        (card,) = httpx.get(f"{url}/models", timeout=10).json()
        assert card["name"] == "tx" and card["family"] == "tahoe" and card["n_layers"] == 3
        assert card["gene_id_kind"] == "ensembl" and card["demo_weights"] is True
        assert card["poolings"] == {"official": 32, "cls": 32, "mean": 32}
        for pooling, options in (("official", {}), ("mean", {"subsample": "top"})):
            item = embed_item(
                counts, genes, model="tx", layers="all", pooling=pooling, options=options
            )
            reply = httpx.post(f"{url}/embed", json={"items": [item]}, timeout=120)
            assert reply.status_code == 200, reply.text
            (result,) = reply.json()
            assert result["unmapped_genes"] == ["ENSG99999999999"]
            expected = local.embed(local.tokenize(counts, genes, options), range(4), [pooling])
            for k in range(4):
                got = np.array(result["layers"][str(k)])
                np.testing.assert_allclose(got, expected[pooling][k], **TOL)
        symbols = embed_item(counts, [f"GENE{i}" for i in range(len(genes))], model="tx")
        reply = httpx.post(f"{url}/embed", json={"items": [symbols]}, timeout=30)
        assert reply.status_code == 400 and "the names look like symbols" in reply.text
