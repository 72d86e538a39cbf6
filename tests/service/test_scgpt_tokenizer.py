"""scGPT's tokenizer: quantile bins as the official collator, the tie rule and how far it is
from the official (random) distribution, binning before sampling, the seeded subsample."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from reference_scgpt import ScGPTReference

from scstrata_service.contract import TokenizedCells
from scstrata_service.families import scgpt
from scstrata_service.families.scgpt.fabricate import fabricate_checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return fabricate_checkpoint(tmp_path_factory.mktemp("scgpt"))


@pytest.fixture(scope="module")
def backend(folder):
    return scgpt.load("sg", folder)


def one_cell(values, genes):
    return sp.csr_matrix(np.asarray(values, dtype=np.float64)[None, :]), list(genes)


def bins_of(tokens, cell=0):
    return tokens.values[tokens.offsets[cell] + 1 : tokens.offsets[cell + 1]]


def official_draw(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Upstream's rule, as published: with L = edges <= v and R = edges < v, the bin is
    ceil(u * (R - L) + L) for a uniform u (so any of R+1..L, evenly)."""
    edges = np.quantile(values, np.linspace(0, 1, 50))
    left, right = np.digitize(values, edges), np.digitize(values, edges, right=True)
    return np.ceil(rng.random(len(values)) * (right - left) + left).astype(np.int64)


@pytest.mark.parametrize("n", [50, 99])
def test_distinct_values_bin_by_rank_as_the_quantile_edges_say(backend, n):
    # n = 50: the 50 edges are the values themselves -> bins 1..50 by rank; n = 99: every
    # second value is an edge and the ones between share the bin above them -> i // 2 + 1
    rng = np.random.default_rng(0)
    values = rng.permutation(np.arange(1, n + 1) * 3.0)
    counts, genes = one_cell(values, backend.known_genes()[:n])
    tokens = backend.tokenize(counts, genes, {})
    assert tokens.token_ids[0] == backend.tokenizer.cls_id and tokens.values[0] == -2.0
    rank = np.argsort(np.argsort(values))
    expected = rank + 1 if n == 50 else rank // 2 + 1
    np.testing.assert_array_equal(bins_of(tokens), expected)
    # no ties here, so both rules give the same bins
    middle = backend.tokenize(counts, genes, {"ties": "middle"})
    np.testing.assert_array_equal(bins_of(middle), expected)


def tied_cell(backend, seed=0, n_ones=30, n_other=25):
    """Raw counts with many 1s and 2s (values tied with repeated edges), as real cells have."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([np.ones(n_ones), np.full(8, 2.0), rng.integers(3, 60, n_other)])
    return one_cell(rng.permutation(values), backend.known_genes()[: len(values)])


def test_tied_values_get_a_bin_in_the_official_range_deterministically(backend):
    counts, genes = tied_cell(backend)
    raw = counts.toarray()[0].astype(np.float32)
    lowest, highest = ScGPTReference.bin_range(raw)
    assert (highest - lowest).max() >= 10  # the 1s may take any of a dozen bins or more
    drawn = bins_of(backend.tokenize(counts, genes, {}))
    assert ((lowest <= drawn) & (drawn <= highest)).all()
    np.testing.assert_array_equal(drawn, bins_of(backend.tokenize(counts, genes, {})))
    middle = bins_of(backend.tokenize(counts, genes, {"ties": "middle"}))
    np.testing.assert_array_equal(middle, lowest + (highest - lowest) // 2)
    # the same cell in another column order, or with another cell beside it, draws the same
    order = np.random.default_rng(1).permutation(len(genes))
    shuffled = backend.tokenize(counts[:, order], [genes[i] for i in order], {})
    by_gene = dict(zip(shuffled.token_ids[1:], bins_of(shuffled)))
    ids = backend.tokenize(counts, genes, {}).token_ids[1:]
    np.testing.assert_array_equal([by_gene[i] for i in ids], drawn)
    other, _ = tied_cell(backend, seed=5)
    pair = backend.tokenize(sp.vstack([other, counts]).tocsr(), genes, {})
    np.testing.assert_array_equal(bins_of(pair, 1), drawn)
    assert not np.array_equal(bins_of(backend.tokenize(counts, genes, {"seed": 1})), drawn)


def test_seeded_ties_follow_the_official_distribution_and_middle_is_measured(backend):
    """Per tied gene, the bins over 2,000 seeds against 2,000 draws of upstream's rule.

    Measured (total variation distance between the two histograms, mean over the tied
    genes): seeded 0.053, the sampling noise of 2,000 draws (the official rule against
    itself: 0.055); middle 0.93 (a point mass against ~15 equally likely
    bins: 1 - 1/15), with the middle bin never more than half a bin from the official mean.
    """
    counts, genes = tied_cell(backend)
    raw = counts.toarray()[0].astype(np.float32)
    lowest, highest = ScGPTReference.bin_range(raw)
    tied = np.flatnonzero(highest > lowest)
    n_draws = 2000
    ours = np.stack([bins_of(backend.tokenize(counts, genes, {"seed": s})) for s in range(n_draws)])
    rng = np.random.default_rng(0)
    official = np.stack([official_draw(raw, rng) for _ in range(n_draws)])
    official_again = np.stack([official_draw(raw, rng) for _ in range(n_draws)])
    middle = bins_of(backend.tokenize(counts, genes, {"ties": "middle"}))

    def tv(a: np.ndarray, b: np.ndarray) -> float:
        bins = np.arange(1, 52)
        ha, hb = (np.histogram(x, bins)[0] / len(x) for x in (a, b))
        return 0.5 * float(np.abs(ha - hb).sum())

    seeded = np.mean([tv(ours[:, g], official[:, g]) for g in tied])
    noise = np.mean([tv(official_again[:, g], official[:, g]) for g in tied])
    point = np.mean([tv(np.full(n_draws, middle[g]), official[:, g]) for g in tied])
    assert seeded < 1.5 * noise + 0.01, (seeded, noise)
    expected_point = np.mean([1 - 1 / (highest[g] - lowest[g] + 1) for g in tied])
    assert abs(point - expected_point) < 0.02 and point > 0.8, (point, expected_point)
    official_mean = official[:, tied].mean(0)
    assert np.abs(middle[tied] - official_mean).max() <= 0.5 + 0.3  # + sampling noise
    np.testing.assert_allclose(ours[:, tied].mean(0), official_mean, atol=0.5)


def test_the_embeddings_of_either_rule_against_official_draws(backend):
    """The official embedding (layer L) of one tied cell under 256 official draws and 256
    seeded ones: mean squared distance of a seeded vector to an official one, over that of
    two official ones (1 = indistinguishable). Measured on this random-weight model: seeded
    1.04 (one more official-like draw each), middle 0.73 (nearer the centre of the official
    draws than they are to each other, 0.5 being the centre itself, but never one of them)."""
    counts, genes = tied_cell(backend, seed=3)
    tokens = backend.tokenize(counts, genes, {})
    raw = counts.toarray()[0].astype(np.float32)
    rng = np.random.default_rng(7)

    def embed(draws: list[np.ndarray]) -> np.ndarray:
        n, length = len(draws), tokens.lengths[0]
        values = np.concatenate([np.concatenate([[-2.0], bins]) for bins in draws])
        cells = TokenizedCells(
            token_ids=np.tile(tokens.token_ids, n),
            values=values.astype(np.float32),
            offsets=np.arange(n + 1, dtype=np.int64) * length,
        )
        return backend.embed(cells, [3], ["official"])["official"][3].astype(np.float64)

    n = 256
    official = embed([official_draw(raw, rng) for _ in range(n)])
    seeded = embed([bins_of(backend.tokenize(counts, genes, {"seed": s})) for s in range(n)])
    middle = embed([bins_of(backend.tokenize(counts, genes, {"ties": "middle"}))])

    def mean_square(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a[:, None] - b[None]) ** 2).sum(-1).mean())

    spread = mean_square(official, official) * n / (n - 1)  # without the zero diagonal
    assert spread > 0  # the official draws do differ
    ratio_seeded = mean_square(seeded, official) / spread
    ratio_middle = mean_square(middle, official) / spread
    assert 0.85 < ratio_seeded < 1.15, ratio_seeded
    assert ratio_middle < 1.0, ratio_middle


def test_bins_come_from_the_whole_cell_before_sampling(backend):
    rng = np.random.default_rng(2)
    values = rng.poisson(3.0, 120) + 1.0
    counts, genes = one_cell(values, backend.known_genes()[:120])
    for ties in ("random", "middle"):
        whole = backend.tokenize(counts, genes, {"ties": ties})
        short = backend.tokenize(counts, genes, {"ties": ties, "max_length": 30})
        assert short.lengths[0] == 30
        by_gene = dict(zip(whole.token_ids[1:], bins_of(whole)))
        np.testing.assert_array_equal(bins_of(short), [by_gene[i] for i in short.token_ids[1:]])


def test_top_subsample_keeps_the_most_expressed_genes_in_column_order(backend):
    values = np.arange(1, 101, dtype=np.float64)[::-1]  # column j holds 100 - j
    counts, genes = one_cell(values, backend.known_genes()[:100])
    tokens = backend.tokenize(counts, genes, {"max_length": 11, "subsample": "top"})
    expected = [backend.tokenizer.index[g] for g in genes[:10]]
    np.testing.assert_array_equal(tokens.token_ids[1:], expected)


def test_a_symbol_sent_twice_gives_two_tokens_as_upstream(backend):
    gene = backend.known_genes()[0]
    counts, genes = one_cell([3.0, 5.0, 1.0], [gene, gene, backend.known_genes()[1]])
    tokens = backend.tokenize(counts, genes, {})
    assert list(tokens.token_ids[1:]).count(backend.tokenizer.index[gene]) == 2
