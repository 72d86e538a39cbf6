"""Gene lookup and the cheap per-cell checks agree with the full move into a model's gene
order."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scstrata_service.contract import InputError
from scstrata_service.gene_mapping import (
    GeneColumns,
    mapped_nonzeros,
    mapped_totals,
    to_model_genes,
)


def test_totals_and_nonzeros_match_the_moved_matrix():
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.7, size=(40, 30)).astype(np.float64)
    dense[5] = 0  # an empty cell
    dense[6, :] = 0
    dense[6, 3] = 4.0  # a cell expressing only an unknown gene
    counts = sp.csr_matrix(dense)
    columns = rng.integers(0, 12, size=30)  # several columns onto one gene
    columns[[3, 7, 11]] = -1  # genes the model does not know
    moved = to_model_genes(counts, columns, 12)

    np.testing.assert_allclose(mapped_totals(counts, columns), moved.sum(axis=1).A1)
    np.testing.assert_array_equal(mapped_nonzeros(counts, columns) > 0, np.diff(moved.indptr) > 0)
    assert mapped_nonzeros(counts, columns)[[5, 6]].tolist() == [0, 0]
    assert mapped_totals(counts, columns)[6] == 0


@pytest.mark.parametrize("family", ["scfoundation", "tahoe", "geneformer"])
def test_checks_name_cells_that_express_no_known_gene(family, tmp_path):
    """Requests are tokenized after they are accepted, so every cell the tokenizer could not
    embed must be refused by the check, naming its rows."""
    from scstrata_service.families import fabricate, load

    backend = load(family, "m", fabricate(family, tmp_path / family))
    known = backend.known_genes()[:20]
    genes = [*known, "NOT_A_GENE"]
    dense = np.zeros((4, len(genes)))
    dense[:, :20] = np.arange(1, 21) * 3.0  # cells 0 and 2 express known genes
    dense[1, :20] = 0
    dense[1, 20] = 5.0  # cell 1: only the unknown gene
    dense[3, :20] = 0  # cell 3: nothing at all
    counts = sp.csr_matrix(dense)
    with pytest.raises(InputError, match=r"cells: 2 cell\(s\).*\[1, 3\]"):
        backend.check_input(counts, genes, {})
    backend.check_input(counts[[0, 2]], genes, {})  # the others pass, and tokenize
    assert backend.tokenize(counts[[0, 2]], genes, {}).n_cells == 2


def test_gene_columns_looks_up_each_list_once_and_keeps_order():
    index = {"A": 0, "B": 1, "C": 2}
    looked_up: list[str] = []

    def lookup(gene: str) -> int:
        looked_up.append(gene)
        return index.get(gene, -1)

    columns_of = GeneColumns(lookup, remember=2)
    columns, unknown = columns_of(["C", "X", "A", "Y"])
    assert columns.tolist() == [2, -1, 0, -1]
    assert unknown == ("X", "Y")

    # an equal list again (a new list, as from the next request): no lookups
    again, _ = columns_of(["C", "X", "A", "Y"])
    assert len(looked_up) == 4
    assert again is columns

    # the same genes in another order are another list
    assert columns_of(["A", "C", "X", "Y"])[0].tolist() == [0, 2, -1, -1]
    assert len(looked_up) == 8


def test_gene_columns_are_read_only():
    """Shared by every request with the same genes, so no caller may change them."""
    columns, _ = GeneColumns({"A": 0}.get)(["A"])
    with pytest.raises(ValueError, match="read-only"):
        columns[0] = 5
