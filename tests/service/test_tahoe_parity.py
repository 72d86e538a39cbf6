"""The served Tahoe-X1 equals an independent per-cell reference at every layer and pooling.

Tolerance: 1e-5 absolute and relative, fp32 service on CPU against a float64 reference
(observed differences are at most ~2e-6).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from reference_tahoe import TahoeReference

from scstrata_service.families import tahoe
from scstrata_service.families.tahoe.fabricate import fabricate_checkpoint

POOLINGS = ["official", "cls", "mean"]
TOL = dict(rtol=1e-5, atol=1e-5)
NO_TRUNCATION = {"max_length": 10_000}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return fabricate_checkpoint(tmp_path_factory.mktemp("tahoe"), max_length=64)


@pytest.fixture(scope="module")
def backend(folder):
    return tahoe.load("tx", folder)


def vocabulary_genes(folder) -> list[str]:
    vocab = json.loads((folder / "vocab.json").read_text())
    return [g for g in vocab if not g.startswith("<")]


def make_cells(folder, n_cells=10, n_genes=150, seed=0):
    """Raw counts over a shuffled subset of the model's genes plus two unknown ids."""
    rng = np.random.default_rng(seed)
    genes = list(rng.choice(vocabulary_genes(folder), n_genes, replace=False))
    genes += ["ENSG99999999999", "TP53"]
    density = rng.uniform(0.05, 0.35, size=(n_cells, 1))
    dense = rng.poisson(2.5, (n_cells, len(genes))) * (rng.random((n_cells, len(genes))) < density)
    dense[:, 0] += 1  # every cell expresses a known gene
    return sp.csr_matrix(dense.astype(np.float64)), genes


def reference_all(folder, counts, genes, max_length=None, subsets=None):
    ref = TahoeReference(folder)
    rows = counts.toarray()
    subsets = subsets or [None] * len(rows)
    return [ref.embed_cell(r, genes, max_length, s) for r, s in zip(rows, subsets)]


def assert_matches(pooled, reference, layers, poolings=POOLINGS):
    for pooling in poolings:
        for k in layers:
            expected = np.stack([cell[k][pooling] for cell in reference])
            np.testing.assert_allclose(
                pooled[pooling][k], expected, **TOL, err_msg=f"layer {k}, pooling {pooling}"
            )


@pytest.mark.parametrize("attention", ["per_cell", "nested"])
def test_every_layer_and_pooling_matches_the_reference(folder, attention):
    counts, genes = make_cells(folder)
    backend = tahoe.load("tx", folder, attention=attention)
    tokens = backend.tokenize(counts, genes, NO_TRUNCATION)
    assert tokens.lengths.max() > 40 and tokens.unmapped_genes == genes[-2:]
    pooled = backend.embed(tokens, [0, 1, 2, 3], POOLINGS)
    reference = reference_all(folder, counts, genes, max_length=10_000)
    assert_matches(pooled, reference, range(4))
    np.testing.assert_allclose(np.linalg.norm(pooled["official"][3], axis=1), 1.0, rtol=1e-6)


def test_both_attention_implementations_give_the_same_numbers(folder):
    counts, genes = make_cells(folder, seed=1)
    out = {}
    for impl in ("per_cell", "nested"):
        backend = tahoe.load("tx", folder, attention=impl)
        out[impl] = backend.embed(backend.tokenize(counts, genes, {}), [1, 3], ["cls", "mean"])
    for pooling in ("cls", "mean"):
        for k in (1, 3):
            np.testing.assert_allclose(
                out["per_cell"][pooling][k], out["nested"][pooling][k], **TOL
            )


def test_a_packed_batch_equals_each_cell_alone(backend, folder):
    counts, genes = make_cells(folder, n_cells=8, seed=2)
    tokens = backend.tokenize(counts, genes, {})
    together = backend.embed(tokens, [0, 2, 3], POOLINGS)
    for i in range(tokens.n_cells):
        alone = backend.embed(tokens.select(np.array([i])), [0, 2, 3], POOLINGS)
        for pooling in POOLINGS:
            for k in (0, 2, 3):
                np.testing.assert_allclose(together[pooling][k][i], alone[pooling][k][0], **TOL)


def test_a_small_token_budget_gives_the_same_numbers_as_one_batch(folder):
    counts, genes = make_cells(folder, n_cells=15, seed=3)
    one_pass = tahoe.load("tx", folder, max_tokens=1_000_000)
    many = tahoe.load("tx", folder, max_tokens=100)
    tokens = one_pass.tokenize(counts, genes, {})
    assert tokens.lengths.max() > 40  # so a budget of 100 tokens really splits the cells
    a = one_pass.embed(tokens, [1, 3], POOLINGS)
    b = many.embed(tokens, [1, 3], POOLINGS)
    for pooling in POOLINGS:
        for k in (1, 3):
            np.testing.assert_allclose(a[pooling][k], b[pooling][k], **TOL)


@pytest.mark.parametrize(
    "variant",
    [
        dict(activation="gelu", value_activation="gelu"),
        dict(n_heads=4, n_kv_heads=2),  # grouped-query attention
        dict(n_heads=4, n_kv_heads=1),  # multi-query attention
        dict(do_binning=False, log_transform=True),
        dict(cell_emb_style="avg-pool"),
    ],
    ids=["gelu", "gqa", "mqa", "log-transform", "avg-pool"],
)
def test_config_variants_match_the_reference(tmp_path, variant):
    folder = fabricate_checkpoint(tmp_path, seed=5, **variant)
    counts, genes = make_cells(folder, n_cells=5, seed=4)
    backend = tahoe.load("tx", folder)
    pooled = backend.embed(backend.tokenize(counts, genes, NO_TRUNCATION), [0, 1, 3], POOLINGS)
    assert_matches(pooled, reference_all(folder, counts, genes, max_length=10_000), [0, 1, 3])


def test_three_b_style_chemical_config_keeps_its_first_gene_unbinned(tmp_path):
    # use_chem_token + keep_first_n_tokens 2 (the 3B training config); at inference the
    # official loader drops the drug token but keeps keep_first_n_tokens, so the first
    # expressed gene keeps its raw value and is never subsampled away.
    folder = fabricate_checkpoint(tmp_path, use_chem_token=True, keep_first_n_tokens=2)
    counts, genes = make_cells(folder, n_cells=6, seed=6)
    backend = tahoe.load("tx", folder)
    tokens = backend.tokenize(counts, genes, {"subsample": "top"})
    first = counts[0].toarray().ravel()
    assert tokens.values[1] == first[np.flatnonzero(first)[0]]  # raw count, not a bin
    pooled = backend.embed(tokens, [0, 3], POOLINGS)
    assert_matches(pooled, reference_all(folder, counts, genes), [0, 3])


def test_cells_longer_than_max_length_keep_their_top_genes_like_the_reference(backend, folder):
    counts, genes = make_cells(folder, n_cells=6, n_genes=300, seed=7)
    tokens = backend.tokenize(counts, genes, {"subsample": "top"})
    assert tokens.lengths.max() == 64 and (counts.getnnz(axis=1) > 70).any()
    pooled = backend.embed(tokens, [0, 3], POOLINGS)
    assert_matches(pooled, reference_all(folder, counts, genes), [0, 3])


def test_random_subsample_is_deterministic_per_cell_and_seed(backend, folder):
    counts, genes = make_cells(folder, n_cells=6, n_genes=300, seed=8)
    first = backend.tokenize(counts, genes, {})
    again = backend.tokenize(counts, genes, {})
    np.testing.assert_array_equal(first.token_ids, again.token_ids)
    a = backend.embed(first, [3], ["official"])["official"][3]
    b = backend.embed(again, [3], ["official"])["official"][3]
    np.testing.assert_array_equal(a, b)
    # the same cell in another column order and another batch gets the same genes
    order = np.random.default_rng(0).permutation(len(genes))
    shuffled = backend.tokenize(counts[::-1][:, order], [genes[i] for i in order], {})
    last = shuffled.select(np.array([shuffled.n_cells - 1]))
    assert sorted(last.token_ids) == sorted(first.select(np.array([0])).token_ids)
    assert first.lengths.max() == 64
    # another seed draws another subset; the reference agrees on whatever subset was drawn
    other = backend.tokenize(counts, genes, {"seed": 1})
    assert not np.array_equal(np.sort(other.token_ids), np.sort(first.token_ids))
    subsets = [first.token_ids[s:e] for s, e in zip(first.offsets[:-1], first.offsets[1:])]
    reference = reference_all(folder, counts, genes, subsets=subsets)
    assert_matches(backend.embed(first, [0, 3], POOLINGS), reference, [0, 3])
