"""`scstrata fabricate --family scgpt` and a real server serving it like in-process."""

from __future__ import annotations

import httpx
import numpy as np

from scstrata_service.cli import main as cli_main
from scstrata_service.families import load
from scstrata_service.launcher import running_service

from helpers import assert_served_like_in_process, embed_item, sparse_counts


def test_the_cli_fabricates_a_release_the_server_embeds_like_in_process(tmp_path, capsys):
    folder = tmp_path / "sg"
    argv = ["fabricate", "--family", "scgpt", "--out", str(folder), "--hidden", "32"]
    argv += ["--depth", "3", "--heads", "4"]
    assert cli_main(argv) == 0
    assert "RANDOM DEMO WEIGHTS" in capsys.readouterr().out
    assert {p.name for p in folder.iterdir()} == {"args.json", "vocab.json", "best_model.pt"}
    local = load("scgpt", "sg", folder)
    rng = np.random.default_rng(21)
    genes = list(rng.choice(local.known_genes(), 120, replace=False)) + ["NOT_A_GENE"]
    counts = sparse_counts(rng, 7, len(genes), rate=1.5, density=0.3)
    with running_service([f"sg=scgpt:{folder}"]) as url:
        (card,) = httpx.get(f"{url}/models", timeout=10).json()
        assert card["family"] == "scgpt" and card["n_layers"] == 3
        assert card["gene_id_kind"] == "symbol" and card["demo_weights"] is True
        cases = (("official", {}), ("mean", {"ties": "middle"}))
        assert_served_like_in_process(url, local, "sg", counts, genes, cases, ["NOT_A_GENE"])
        ensembl = embed_item(counts, [f"ENSG{i:011d}" for i in range(len(genes))], model="sg")
        reply = httpx.post(f"{url}/embed", json={"items": [ensembl]}, timeout=30)
        assert 400 <= reply.status_code < 500 and "look like Ensembl ids" in reply.text
