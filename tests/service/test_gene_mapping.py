"""The cheap per-cell checks agree with the full move into a model's gene order."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from scstrata_service.gene_mapping import mapped_nonzeros, mapped_totals, to_model_genes


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
