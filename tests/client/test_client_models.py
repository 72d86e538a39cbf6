import pytest

from scstrata_client import Client, ModelCard

CARD = {
    "name": "scfoundation",
    "family": "scfoundation",
    "n_layers": 12,
    "hidden_size": 768,
    "poolings": {"official": 3072, "S": 768, "T": 768, "mean": 768, "max": 768},
    "default_pooling": "official",
    "gene_id_kind": "symbol",
    "vocab_size": 19264,
    "checkpoint_digest": "sha256:abc",
    "demo_weights": True,
    "options": {"pre_normalized": "...", "tgthighres": "..."},
}


def test_model_card_reads_the_api_md_example_and_keeps_unknown_fields():
    card = ModelCard.model_validate(CARD | {"max_cells": 4096})
    assert card.n_layers == 12
    assert card.dim() == 3072
    assert card.dim("S") == 768
    assert card.model_extra == {"max_cells": 4096}


def test_model_card_names_the_known_poolings_for_an_unknown_one():
    card = ModelCard.model_validate(CARD)
    with pytest.raises(KeyError, match="has: S, T, max, mean, official"):
        card.dim("cls")


def test_progress_bar_defaults_to_tqdms_rule_for_several_chunks():
    """None lets tqdm.auto decide: a bar on a terminal, a widget in a notebook (issue 17)."""
    with Client("http://svc") as auto, Client("http://svc", progress=False) as off:
        assert auto._show_progress(2) is None
        assert auto._show_progress(1) is False
        assert off._show_progress(5) is False
    with Client("http://svc", progress=True) as on:
        assert on._show_progress(1) is True


def test_client_rejects_a_chunk_size_below_one():
    with pytest.raises(ValueError, match="chunk_size"):
        Client("http://svc", chunk_size=0)
