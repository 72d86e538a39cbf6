"""The served scFoundation equals an independent per-cell reference at every layer/pooling.

Tolerance: 1e-5 absolute and relative, fp32 service against a float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scstrata_service.families import scfoundation
from scstrata_service.families.scfoundation.checkpoint import CheckpointError, load_checkpoint

from helpers import make_cells
from reference_scfoundation import ScFoundationReference

POOLINGS = ["official", "S", "T", "max", "mean"]
TOL = dict(rtol=1e-5, atol=1e-5)


def reference_all(checkpoint, counts, genes, version="cell", **options):
    ref = ScFoundationReference(checkpoint, version)
    dense = counts.toarray()
    return [ref.embed_cell(row, genes, **options) for row in dense]


def assert_matches(pooled, reference, layers, poolings=POOLINGS):
    for pooling in poolings:
        for k in layers:
            expected = np.stack([cell[k][pooling] for cell in reference])
            np.testing.assert_allclose(
                pooled[pooling][k], expected, **TOL, err_msg=f"layer {k}, pooling {pooling}"
            )


@pytest.mark.parametrize("attention", ["per_cell", "nested"])
def test_every_layer_and_pooling_matches_the_per_cell_reference(
    tiny_checkpoint, vocabulary, attention
):
    counts, genes = make_cells(vocabulary)
    backend = scfoundation.load("scf", tiny_checkpoint, attention=attention)
    tokens = backend.tokenize(counts, genes, {})
    pooled = backend.embed(tokens, [0, 1, 2, 3], POOLINGS)
    assert_matches(pooled, reference_all(tiny_checkpoint, counts, genes), range(4))


def test_small_token_budget_gives_the_same_numbers_as_one_batch(tiny_checkpoint, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=15, seed=3)
    one_pass = scfoundation.load("scf", tiny_checkpoint, max_tokens=1_000_000)
    many = scfoundation.load("scf", tiny_checkpoint, max_tokens=300)
    tokens = one_pass.tokenize(counts, genes, {})
    assert tokens.lengths.max() > 150  # so a budget of 300 really splits the cells
    a = one_pass.embed(tokens, [1, 3], ["official"])
    b = many.embed(tokens, [1, 3], ["official"])
    for k in (1, 3):
        np.testing.assert_allclose(a["official"][k], b["official"][k], **TOL)


@pytest.mark.parametrize(
    "options",
    [{"tgthighres": "f2"}, {"tgthighres": "a1.5"}, {"pre_normalized": True, "tgthighres": "t3"}],
)
def test_preprocessing_options_match_the_reference(tiny_checkpoint, vocabulary, options):
    counts, genes = make_cells(vocabulary, n_cells=5, seed=7)
    if options.get("pre_normalized"):
        counts = counts.copy()
        counts.data = np.log1p(counts.data)  # any positive log-scale values
    backend = scfoundation.load("scf", tiny_checkpoint)
    pooled = backend.embed(backend.tokenize(counts, genes, options), [0, 3], POOLINGS)
    reference = reference_all(tiny_checkpoint, counts, genes, **options)
    assert_matches(pooled, reference, [0, 3])


def test_gene_and_rde_versions_are_selectable_and_differ(tiny_checkpoint, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=4)
    out = {}
    for version in ("cell", "rde"):
        backend = scfoundation.load("scf", tiny_checkpoint, version=version)
        out[version] = backend.embed(backend.tokenize(counts, genes, {}), [3], ["S"])["S"][3]
        reference = reference_all(tiny_checkpoint, counts, genes, version=version)
        assert_matches({"S": {3: out[version]}}, reference, [3], ["S"])
    assert not np.allclose(out["cell"], out["rde"])


def test_only_encoder_weights_are_kept_and_decoder_keys_are_ignored(tiny_checkpoint):
    raw = torch.load(tiny_checkpoint, weights_only=True)["cell"]["state_dict"]
    assert any(k.startswith("model.decoder.") for k in raw)
    loaded = load_checkpoint(tiny_checkpoint)
    assert loaded.encoder_state  # and the encoder loads strictly in scfoundation.load
    assert all(k.split(".")[0] in {"token_emb", "pos_emb", "encoder"} for k in loaded.encoder_state)
    assert loaded.config.depth == 3 and loaded.config.seq_len == 19_266


def test_a_checkpoint_of_another_model_type_is_refused(tmp_path, tiny_checkpoint):
    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["cell"]["config"]["model"] = "performer_gau"
    bad = tmp_path / "models.ckpt"
    torch.save(raw, bad)
    with pytest.raises(CheckpointError, match="mae_autobin"):
        load_checkpoint(bad)
