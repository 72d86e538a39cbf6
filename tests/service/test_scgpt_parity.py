"""The served scGPT equals an independent per-cell reference at every layer and pooling.

Tolerance: 1e-5 absolute and relative, fp32 service on CPU against a float64 reference
(observed differences are at most ~1e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from reference_scgpt import ScGPTReference

from scstrata_service.families import scgpt
from scstrata_service.families.scgpt.fabricate import fabricate_checkpoint

POOLINGS = ["official", "cls", "mean"]
LAYERS = [0, 1, 2, 3]
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return fabricate_checkpoint(tmp_path_factory.mktemp("scgpt"), d_hid=48)


@pytest.fixture(scope="module")
def backend(folder):
    return scgpt.load("sg", folder)


def make_cells(backend, n_cells=8, n_genes=150, seed=0):
    """Raw counts over a shuffled subset of the model's genes plus two unknown names."""
    rng = np.random.default_rng(seed)
    genes = list(rng.choice(backend.known_genes(), n_genes, replace=False))
    genes += ["NOT_A_GENE", "tp53"]
    density = rng.uniform(0.05, 0.4, size=(n_cells, 1))
    dense = rng.poisson(2.5, (n_cells, len(genes))) * (rng.random((n_cells, len(genes))) < density)
    dense[:, 0] += 1  # every cell expresses a known gene
    return sp.csr_matrix(dense.astype(np.float64)), genes


def per_cell(tokens):
    """Each cell's (token ids, values) of a packed batch."""
    return [
        (tokens.token_ids[s:e], tokens.values[s:e])
        for s, e in zip(tokens.offsets[:-1], tokens.offsets[1:])
    ]


def reference_all(folder, counts, genes, tokens=None, ties="middle"):
    """Per cell, the reference's layers; with ``tokens``, the service's drawn bins (after the
    reference checks each lies in the range upstream may draw from) and kept genes."""
    ref = ScGPTReference(folder)
    out = []
    for c, row in enumerate(counts.toarray()):
        bins = subset = None
        if tokens is not None:
            ids, values = per_cell(tokens)[c]
            subset = set(ids[1:].tolist())
            if ties == "random":
                bins = dict(zip(ids[1:].tolist(), values[1:].tolist()))
        out.append(ref.embed_cell(row, genes, bins, subset))
    return out


def assert_matches(pooled, reference, layers=LAYERS):
    for pooling in POOLINGS:
        for k in layers:
            expected = np.stack([cell[k][pooling] for cell in reference])
            np.testing.assert_allclose(
                pooled[pooling][k], expected, **TOL, err_msg=f"layer {k}, pooling {pooling}"
            )


@pytest.mark.parametrize("attention", ["per_cell", "nested"])
def test_every_layer_and_pooling_matches_the_reference(folder, attention):
    backend = scgpt.load("sg", folder, attention=attention)
    counts, genes = make_cells(backend)
    tokens = backend.tokenize(counts, genes, {"ties": "middle"})
    assert tokens.lengths.max() > 40 and tokens.unmapped_genes == genes[-2:]
    pooled = backend.embed(tokens, LAYERS, POOLINGS)
    assert_matches(pooled, reference_all(folder, counts, genes))
    np.testing.assert_allclose(np.linalg.norm(pooled["official"][3], axis=1), 1.0, rtol=1e-6)


def test_drawn_tie_bins_lie_in_the_official_range_and_match_the_reference(backend, folder):
    counts, genes = make_cells(backend, seed=1)
    tokens = backend.tokenize(counts, genes, {})  # ties: "random" (seeded)
    middle = backend.tokenize(counts, genes, {"ties": "middle"})
    assert not np.array_equal(tokens.values, middle.values)  # the cells do have ties
    pooled = backend.embed(tokens, LAYERS, POOLINGS)
    assert_matches(pooled, reference_all(folder, counts, genes, tokens, ties="random"))


def test_a_packed_batch_equals_each_cell_alone(backend):
    counts, genes = make_cells(backend, n_cells=8, seed=2)
    tokens = backend.tokenize(counts, genes, {})
    together = backend.embed(tokens, [0, 2, 3], POOLINGS)
    for i in range(tokens.n_cells):
        alone = backend.embed(tokens.select(np.array([i])), [0, 2, 3], POOLINGS)
        for pooling in POOLINGS:
            for k in (0, 2, 3):
                np.testing.assert_allclose(together[pooling][k][i], alone[pooling][k][0], **TOL)


def test_a_small_token_budget_gives_the_same_numbers_as_one_batch(folder):
    one_pass = scgpt.load("sg", folder, max_tokens=1_000_000)
    many = scgpt.load("sg", folder, max_tokens=100)
    counts, genes = make_cells(one_pass, n_cells=12, seed=3)
    tokens = one_pass.tokenize(counts, genes, {})
    assert tokens.lengths.max() > 40  # so a budget of 100 tokens really splits the cells
    a, b = one_pass.embed(tokens, [1, 3], POOLINGS), many.embed(tokens, [1, 3], POOLINGS)
    for pooling in POOLINGS:
        for k in (1, 3):
            np.testing.assert_allclose(a[pooling][k], b[pooling][k], **TOL)


@pytest.mark.parametrize("subsample", ["top", "random"])
def test_cells_longer_than_max_length_match_the_reference_on_the_kept_genes(
    backend, folder, subsample
):
    counts, genes = make_cells(backend, n_cells=6, n_genes=300, seed=4)
    options = {"max_length": 40, "subsample": subsample, "ties": "middle"}
    tokens = backend.tokenize(counts, genes, options)
    assert tokens.lengths.max() == 40 and (counts.getnnz(axis=1) > 45).any()
    pooled = backend.embed(tokens, [0, 3], POOLINGS)
    # bins come from the whole cell (before sampling): the reference bins the whole cell too
    assert_matches(pooled, reference_all(folder, counts, genes, tokens), [0, 3])


def test_a_release_saved_without_flash_attn_gives_the_same_numbers(tmp_path, folder, backend):
    other = fabricate_checkpoint(tmp_path, d_hid=48, attn_names="in_proj")  # same seed
    counts, genes = make_cells(backend, n_cells=4, seed=5)
    tokens = backend.tokenize(counts, genes, {})
    a = backend.embed(tokens, [3], ["cls"])["cls"][3]
    b = scgpt.load("sg", other).embed(tokens, [3], ["cls"])["cls"][3]
    np.testing.assert_array_equal(a, b)
