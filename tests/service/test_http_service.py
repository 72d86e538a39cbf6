"""The real server (`scstrata serve` on loopback): cards, embeddings, errors."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest

from helpers import embed_item, make_cells

TOL = dict(rtol=1e-5, atol=1e-5)


def post_embed(url: str, item: dict) -> httpx.Response:
    return httpx.post(f"{url}/embed", json={"items": [item]}, timeout=120)


def test_models_lists_the_served_card(service_url):
    cards = httpx.get(f"{service_url}/models", timeout=10).json()
    assert [c["name"] for c in cards] == ["scf"]
    card = cards[0]
    assert card["family"] == "scfoundation" and card["n_layers"] == 3
    assert card["poolings"]["official"] == 4 * card["hidden_size"] == 128
    assert card["demo_weights"] is True and card["checkpoint_digest"].startswith("sha256:")


def test_all_layers_over_http_equal_the_in_process_backend(service_url, tiny_backend, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=6, seed=11)
    reply = post_embed(service_url, embed_item(counts, genes, layers="all"))
    assert reply.status_code == 200, reply.text
    (result,) = reply.json()
    assert sorted(result["layers"], key=int) == ["0", "1", "2", "3"]
    assert result["n_cells"] == 6 and result["dim"] == 128
    assert result["n_unmapped_genes"] == 2 and "NOT_A_GENE" in result["unmapped_genes"]
    expected = tiny_backend.embed(
        tiny_backend.tokenize(counts, genes, {}), [0, 1, 2, 3], ["official"]
    )["official"]
    for k in range(4):
        np.testing.assert_allclose(np.array(result["layers"][str(k)]), expected[k], **TOL)


def test_negative_and_listed_layers_resolve_to_the_convention(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=2, seed=12)
    last = post_embed(service_url, embed_item(counts, genes, layers=-1, pooling="S")).json()[0]
    both = post_embed(service_url, embed_item(counts, genes, layers=[3, 1], pooling="S")).json()[0]
    assert list(last["layers"]) == ["3"] and sorted(both["layers"]) == ["1", "3"]
    np.testing.assert_allclose(last["layers"]["3"], both["layers"]["3"], **TOL)
    assert len(last["layers"]["3"][0]) == 32


def _bad_requests(vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=3, seed=13)
    good = embed_item(counts, genes)

    def variant(**changes):
        return {**good, **changes}

    def cells(**changes):
        return variant(cells={**good["cells"], **changes})

    nnz = len(good["cells"]["data"])
    return {
        "unknown model": (variant(model="nope"), "model"),
        "layer out of range": (variant(layers=9), "layers"),
        "negative layer out of range": (variant(layers=-5), "layers"),
        "empty layer list": (variant(layers=[]), "layers"),
        "unknown pooling": (variant(pooling="cls"), "pooling"),
        "wrong type for layers": (variant(layers="some"), "layers"),
        "gene count mismatch": (variant(genes=genes[:-1]), "genes"),
        "duplicate genes": (variant(genes=[genes[0]] + genes[:-1]), "genes"),
        "no known genes": (variant(genes=[f"X{i}" for i in range(len(genes))]), "genes"),
        "indptr length": (cells(indptr=good["cells"]["indptr"][:-1]), "cells.indptr"),
        "indices out of range": (cells(indices=[len(genes) + 5] * nnz), "cells.indices"),
        "indices/data mismatch": (cells(indices=good["cells"]["indices"][:-1]), "cells.indices"),
        "negative counts": (cells(data=[-1.0] * nnz), "cells.data"),
        "non-integer counts": (cells(data=[0.5] * nnz), "cells.data"),
        "NaN counts": (cells(data=[math.nan] * nnz), "cells.data"),
        "all-zero cell": (cells(data=[0.0] * nnz), "cells"),
        "empty shape": (
            cells(shape=[0, len(genes)], indptr=[0], data=[], indices=[]),
            "cells.shape",
        ),
        "bad option": (variant(options={"tgthighres": "x9"}), "options.tgthighres"),
        "unknown option": (variant(options={"colour": "red"}), "options.colour"),
        "missing genes": ({k: v for k, v in good.items() if k != "genes"}, "genes"),
    }


CASES = [
    "unknown model",
    "layer out of range",
    "negative layer out of range",
    "empty layer list",
    "unknown pooling",
    "wrong type for layers",
    "gene count mismatch",
    "duplicate genes",
    "no known genes",
    "indptr length",
    "indices out of range",
    "indices/data mismatch",
    "negative counts",
    "non-integer counts",
    "NaN counts",
    "all-zero cell",
    "empty shape",
    "bad option",
    "unknown option",
    "missing genes",
]


def test_the_catalogue_of_bad_requests_is_complete(vocabulary):
    assert sorted(_bad_requests(vocabulary)) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_a_client_mistake_gets_a_400_naming_the_field(service_url, vocabulary, case):
    item, field = _bad_requests(vocabulary)[case]
    # json.dumps writes NaN literally, which the "NaN counts" case needs
    reply = httpx.post(
        f"{service_url}/embed",
        content=json.dumps({"items": [item]}),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert reply.status_code == 400, reply.text
    assert field in reply.text, reply.text


def test_an_empty_request_is_a_400_naming_items(service_url):
    for body in ('{"items": []}', "{}"):
        reply = httpx.post(
            f"{service_url}/embed",
            content=body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert reply.status_code == 400 and "items" in reply.text, body


def test_malformed_json_is_a_400_and_the_server_keeps_serving(service_url, vocabulary):
    reply = httpx.post(
        f"{service_url}/embed",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == 400
    counts, genes = make_cells(vocabulary, n_cells=1, seed=14)
    assert post_embed(service_url, embed_item(counts, genes, layers=0)).status_code == 200
    assert httpx.get(f"{service_url}/readyz", timeout=10).status_code == 200
