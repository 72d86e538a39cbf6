"""Loading the Tahoe-X1 release layout, the model card, gene mapping and input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from scstrata_service.contract import InputError
from scstrata_service.families import load, tahoe
from scstrata_service.families.tahoe.checkpoint import (
    ENCODER_PREFIXES,
    CheckpointError,
    load_checkpoint,
)
from scstrata_service.families.tahoe.fabricate import fabricate_checkpoint

from helpers import COMMON_INPUT_ERRORS, common_input_error, poisson_counts


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return fabricate_checkpoint(tmp_path_factory.mktemp("tahoe"))


@pytest.fixture(scope="module")
def backend(folder):
    return tahoe.load("tx", folder)


def genes_of(folder, n=40):
    vocab = json.loads((folder / "vocab.json").read_text())
    return [g for g in vocab if not g.startswith("<")][:n]


def test_the_card_describes_the_checkpoint(backend):
    card = backend.card
    assert card.family == "tahoe" and card.n_layers == 3 and card.hidden_size == 32
    assert card.poolings == {"official": 32, "cls": 32, "mean": 32}
    assert card.gene_id_kind == "ensembl" and card.vocab_size == 500
    assert card.demo_weights is True and card.checkpoint_digest.startswith("sha256:")
    assert set(card.options) == {"final_norm", "max_length", "subsample", "seed"}
    assert "this model: 64" in card.options["max_length"]


def test_decoder_flag_and_chemical_weights_are_ignored(tmp_path):
    folder = fabricate_checkpoint(tmp_path, use_chem_token=True, keep_first_n_tokens=2)
    raw = load_file(str(folder / "model.safetensors"))
    for prefix in ("expression_decoder.", "mvc_decoder.", "flag_encoder.", "chem_encoder."):
        assert any(k.startswith("model." + prefix) for k in raw), prefix
    loaded = load_checkpoint(folder)
    assert loaded.encoder_state and all(
        k.startswith(ENCODER_PREFIXES) for k in loaded.encoder_state
    )
    tahoe.load("tx", folder)  # the encoder loads these weights strictly


def test_a_composer_checkpoint_gives_the_same_numbers_as_safetensors(tmp_path, folder):
    composer = fabricate_checkpoint(tmp_path, weights_format="composer")  # same seed, same weights
    assert (composer / "best-model.pt").is_file() and not (composer / "model.safetensors").exists()
    counts, genes = poisson_counts(), genes_of(folder)
    out = []
    for path in (folder, composer / "best-model.pt"):
        b = tahoe.load("tx", path)
        out.append(b.embed(b.tokenize(counts, genes, {}), [2], ["cls"])["cls"][2])
    np.testing.assert_array_equal(out[0], out[1])


def test_demo_weights_flag_comes_from_the_model_config(tmp_path):
    folder = fabricate_checkpoint(tmp_path)
    config = yaml.safe_load((folder / "model_config.yml").read_text())
    del config["demo_weights"]
    (folder / "model_config.yml").write_text(yaml.safe_dump(config))
    assert tahoe.load("tx", folder).card.demo_weights is False


def _rewrite_model_config(folder, **changes):
    config = yaml.safe_load((folder / "model_config.yml").read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[key] = value
    (folder / "model_config.yml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_vocab", "missing \\['vocab.json'\\]"),
        ("no_weights", "no weights"),
        ("other_model", "not Tahoe-X1 weights"),
        ("kv_heads", "Wqkv has 96 rows"),
        ("w_pool", "cell_emb_style 'w-pool' unsupported"),
        ("vocab_size", "vocab_size"),
        ("rmsnorm", "norm_type 'rmsnorm' unsupported"),
    ],
)
def test_a_wrong_layout_is_refused_with_a_clear_error(tmp_path, damage, message):
    folder = fabricate_checkpoint(tmp_path, hidden=32, n_heads=4)
    if damage == "no_vocab":
        (folder / "vocab.json").unlink()
    elif damage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "other_model":
        save_file(
            {"encoder.embedding.weight": torch.zeros(3, 2)}, str(folder / "model.safetensors")
        )
    elif damage == "kv_heads":
        _rewrite_model_config(folder, attn_config__kv_n_heads=2)
    elif damage == "w_pool":
        _rewrite_model_config(folder, cell_emb_style="w-pool")
    elif damage == "vocab_size":
        _rewrite_model_config(folder, vocab_size=7)
    elif damage == "rmsnorm":
        _rewrite_model_config(folder, norm_config__norm_type="rmsnorm")
    with pytest.raises(CheckpointError, match=message):
        load("tahoe", "tx", folder)


def test_versioned_ensembl_ids_map_and_unknown_genes_are_reported(backend, folder):
    genes = genes_of(folder)
    versioned = [f"{g}.12" for g in genes[:20]] + genes[20:38] + ["ENSG00000000000", "GAPDH"]
    counts = poisson_counts()
    plain = backend.tokenize(counts, genes, {})
    mixed = backend.tokenize(counts, versioned, {})
    np.testing.assert_array_equal(
        plain.token_ids[plain.offsets[0] : plain.offsets[1]][:20],
        mixed.token_ids[mixed.offsets[0] : mixed.offsets[1]][:20],
    )
    assert mixed.unmapped_genes == ["ENSG00000000000", "GAPDH"]


@pytest.mark.parametrize(
    "case, field",
    [("symbols", "genes"), ("bad subsample", "options.subsample"), *COMMON_INPUT_ERRORS],
)
def test_input_errors_name_the_field(backend, folder, case, field):
    genes, counts, options = genes_of(folder), poisson_counts(), {}
    if case == "symbols":
        genes = [f"GENE{i}" for i in range(len(genes))]
    elif case == "bad subsample":
        options = {"subsample": "first"}
    else:
        counts, options = common_input_error(case, counts)
    with pytest.raises(InputError) as err:
        backend.check_input(counts, genes, options)
    assert str(err.value).startswith(field), str(err.value)
