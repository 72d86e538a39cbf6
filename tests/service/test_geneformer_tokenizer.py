"""Geneformer's rank-value encoding: a hand-computed tiny case, a per-cell reference, errors.

Tiny case (n_counts = 32 and power-of-two medians, so every rank value is exact):
columns D, c (lower case), B, OLD (maps onto A), E, A, UNKNOWN1.

    gene  token  median  counts            x / median  v = x/32*1e4/median
    A     4      1       OLD 1 + A 1 = 2   2           625
    B     5      2       6                 3           937.5
    C     6      0.5     1                 2           625
    D     7      4       12                3           937.5
    E     8      1       2                 2           625

Descending v, ties to the lower token id: B D | A C E -> 5 7 4 6 8.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scstrata_service.contract import InputError
from scstrata_service.families.geneformer.checkpoint import GeneDictionaries, load_dictionaries
from scstrata_service.families.geneformer.fabricate import fabricate_checkpoint
from scstrata_service.families.geneformer.tokenizer import GeneformerTokenizer

GENES = {"ENSG0A": 4, "ENSG0B": 5, "ENSG0C": 6, "ENSG0D": 7, "ENSG0E": 8}
MEDIANS = {"ENSG0A": 1.0, "ENSG0B": 2.0, "ENSG0C": 0.5, "ENSG0D": 4.0, "ENSG0E": 1.0}
COLUMNS = ["ENSG0D", "ensg0c", "ENSG0B", "ENSGOLD", "ENSG0E", "ENSG0A", "UNKNOWN1"]
COUNTS = sp.csr_matrix(
    np.array(
        [
            [12, 1, 6, 1, 2, 1, 9],  # n_counts 32 (the unknown gene counts too)
            [1, 0, 0, 0, 0, 0, 1],  # only D: v = 1/2*1e4/4 = 1250
        ],
        dtype=np.float64,
    )
)


def tiny(version: str, input_size: int) -> GeneformerTokenizer:
    special = {"<pad>": 0, "<mask>": 1}
    if version == "V2":
        special |= {"<cls>": 2, "<eos>": 3}
    mapping = {g: g for g in GENES} | {"ENSGOLD": "ENSG0A"}
    return GeneformerTokenizer(
        GeneDictionaries(version, dict(GENES), dict(MEDIANS), mapping, special), input_size
    )


def cells_of(tokens) -> list[list[int]]:
    return [tokens.token_ids[s:e].tolist() for s, e in zip(tokens.offsets[:-1], tokens.offsets[1:])]


def test_v2_hand_computed_ranking_with_cls_and_eos():
    tokens = tiny("V2", 4096).tokenize(COUNTS, COLUMNS, {})
    assert cells_of(tokens) == [[2, 5, 7, 4, 6, 8, 3], [2, 7, 3]]
    np.testing.assert_array_equal(tokens.values[:7], [0, 937.5, 937.5, 625, 625, 625, 0])
    assert tokens.values[8] == 1250.0
    assert tokens.unmapped_genes == ["UNKNOWN1"]  # the lower-case id and the alias map


def test_v1_hand_computed_ranking_has_no_special_tokens():
    tokens = tiny("V1", 2048).tokenize(COUNTS, COLUMNS, {})
    assert cells_of(tokens) == [[5, 7, 4, 6, 8], [7]]


def test_truncation_keeps_the_top_ranked_genes():
    # V2 keeps input - 2 genes, then adds <cls> and <eos>; V1 keeps input genes
    assert cells_of(tiny("V2", 5).tokenize(COUNTS, COLUMNS, {})) == [[2, 5, 7, 4, 3], [2, 7, 3]]
    assert cells_of(tiny("V1", 3).tokenize(COUNTS, COLUMNS, {})) == [[5, 7, 4], [7]]


def test_ranks_ignore_column_order_and_depth_scaling():
    tokenizer = tiny("V2", 4096)
    reference = cells_of(tokenizer.tokenize(COUNTS, COLUMNS, {}))
    order = [6, 3, 0, 5, 2, 4, 1]
    permuted = tokenizer.tokenize(COUNTS[:, order], [COLUMNS[i] for i in order], {})
    assert cells_of(permuted) == reference
    cp10k = sp.csr_matrix(COUNTS.multiply(1e4 / COUNTS.sum(axis=1)))
    with pytest.raises(InputError, match="allow_non_integer"):
        tokenizer.check(cp10k, COLUMNS, {})
    tokenizer.check(cp10k, COLUMNS, {"allow_non_integer": True})
    scaled = tokenizer.tokenize(cp10k, COLUMNS, {"allow_non_integer": True})
    assert cells_of(scaled) == reference


def test_input_errors_name_the_field():
    tokenizer = tiny("V2", 4096)
    with pytest.raises(InputError, match=r"^genes: .*Ensembl.*gene symbols"):
        tokenizer.check(COUNTS, ["TP53", "A1BG", "X", "Y", "Z", "W", "V"], {})
    no_genes = COUNTS.toarray()
    no_genes[1] = [0, 0, 0, 0, 0, 0, 7]  # only the unknown gene is expressed
    with pytest.raises(InputError, match=r"^cells: 1 cell.*rows \[1\]"):
        tokenizer.check(sp.csr_matrix(no_genes), COLUMNS, {})
    with pytest.raises(InputError, match=r"rows \[1\]"):
        tokenizer.tokenize(sp.csr_matrix(no_genes), COLUMNS, {})
    with pytest.raises(InputError, match=r"^options\.nonsense"):
        tokenizer.check(COUNTS, COLUMNS, {"nonsense": 1})
    tokenizer.check(COUNTS, COLUMNS, {})


def reference_tokenize(dictionaries: GeneDictionaries, input_size: int, dense, genes):
    """One cell at a time, as the official tokenizer, with ties to the lower token id."""
    by_token = sorted(dictionaries.gene_tokens, key=dictionaries.gene_tokens.get)
    column = {gene: i for i, gene in enumerate(by_token)}
    tokens = np.array([dictionaries.gene_tokens[g] for g in by_token])
    medians = np.array([dictionaries.medians[g] for g in by_token])
    out = []
    for row in dense:
        x = np.zeros(len(by_token))
        for gene, count in zip(genes, row):
            target = dictionaries.mapping.get(gene.upper())
            if target in column:
                x[column[target]] += count  # collapsed ids are summed
        v = x / row.sum() * 10_000 / medians
        nonzero = np.nonzero(v)[0]
        ranked = tokens[nonzero][np.argsort(-v[nonzero], kind="stable")]
        if dictionaries.cls_id is None:
            out.append(ranked[:input_size].tolist())
        else:
            kept = ranked[: input_size - 2].tolist()
            out.append([dictionaries.cls_id, *kept, dictionaries.eos_id])
    return out


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_vectorised_tokenizer_equals_a_per_cell_reference(tmp_path, version):
    folder = fabricate_checkpoint(tmp_path, version=version, n_layers=1, hidden=8, n_heads=2)
    dictionaries = load_dictionaries(folder)
    assert isinstance(next(iter(dictionaries.medians.values())), float)  # numpy scalars read
    tokenizer = GeneformerTokenizer(dictionaries, 40)
    rng = np.random.default_rng(3)
    aliases = [k for k, v in dictionaries.mapping.items() if k != v]
    genes = [*rng.choice(tokenizer.genes, 200, replace=False), *aliases, "ENSG_UNKNOWN"]
    genes[5] = genes[5].lower()
    dense = rng.poisson(1.5, (12, len(genes))) * (rng.random((12, len(genes))) < 0.3)
    dense[:, 0] += 1
    tokens = tokenizer.tokenize(sp.csr_matrix(dense.astype(float)), genes, {})
    assert cells_of(tokens) == reference_tokenize(dictionaries, 40, dense, genes)
    assert tokens.unmapped_genes == ["ENSG_UNKNOWN"]
    assert max(len(c) for c in cells_of(tokens)) == 40
