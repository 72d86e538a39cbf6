import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from scstrata_client._inputs import as_csr, chunk_ranges


def test_dense_array_becomes_float32_csr_with_same_values(counts, gene_names):
    csr, genes = as_csr(counts, gene_names)
    assert isinstance(csr, sp.csr_matrix)
    assert csr.dtype == np.float32
    np.testing.assert_array_equal(csr.toarray(), counts.astype(np.float32))
    assert genes == gene_names


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil", "dok"])
def test_every_sparse_format_becomes_csr_with_same_values(counts, gene_names, fmt):
    csr, _ = as_csr(sp.csr_matrix(counts).asformat(fmt), gene_names)
    assert isinstance(csr, sp.csr_matrix)
    assert csr.dtype == np.float32
    np.testing.assert_array_equal(csr.toarray(), counts)


def test_sparse_array_api_is_accepted(counts, gene_names):
    csr, _ = as_csr(sp.csc_array(counts), gene_names)
    assert isinstance(csr, sp.csr_matrix)
    np.testing.assert_array_equal(csr.toarray(), counts)


def test_anndata_takes_counts_from_X_and_genes_from_var_names(counts, gene_names):
    adata = ad.AnnData(X=sp.csr_matrix(counts))
    adata.var_names = gene_names
    csr, genes = as_csr(adata)
    np.testing.assert_array_equal(csr.toarray(), counts)
    assert genes == gene_names


def test_genes_argument_overrides_anndata_var_names(counts, gene_names):
    adata = ad.AnnData(X=counts)
    adata.var_names = [f"ENSG{i:011d}" for i in range(4)]
    _, genes = as_csr(adata, gene_names)
    assert genes == gene_names


def test_gene_count_mismatch_is_a_value_error_naming_genes(counts, gene_names):
    with pytest.raises(ValueError, match=r"genes: got 3 names for 4 columns"):
        as_csr(counts, gene_names[:3])


def test_gene_override_mismatch_on_anndata_is_a_value_error(counts, gene_names):
    with pytest.raises(ValueError, match=r"^genes:"):
        as_csr(ad.AnnData(X=counts), [*gene_names, "EXTRA"])


def test_matrix_without_genes_is_a_value_error(counts):
    with pytest.raises(ValueError, match=r"^genes: required"):
        as_csr(counts)


def test_a_single_string_is_not_taken_as_gene_names(counts):
    with pytest.raises(TypeError, match=r"^genes:"):
        as_csr(counts[:, :1], "TP53")


def test_one_dimensional_input_is_a_value_error_naming_X():
    with pytest.raises(ValueError, match=r"^X: expected a 2-D matrix"):
        as_csr(np.ones(4), ["A", "B", "C", "D"])


def test_non_finite_values_are_rejected_before_sending(counts, gene_names):
    counts[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"^X: contains NaN"):
        as_csr(counts, gene_names)


def test_empty_input_is_rejected(gene_names):
    with pytest.raises(ValueError, match="no cells"):
        as_csr(np.zeros((0, 4)), gene_names)


def test_non_numeric_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"^X: expected numeric"):
        as_csr(np.array([["a", "b"]]), ["A", "B"])


@pytest.mark.parametrize(("n_rows", "size"), [(1, 1), (10, 3), (9, 3), (2, 1000), (1000, 1000)])
def test_chunk_ranges_cover_every_row_once_in_order(n_rows, size):
    ranges = chunk_ranges(n_rows, size)
    rows = [r for start, stop in ranges for r in range(start, stop)]
    assert rows == list(range(n_rows))
    assert all(0 < stop - start <= size for start, stop in ranges)


def test_chunk_ranges_of_ten_by_four():
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_chunk_size_below_one_is_rejected():
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_ranges(5, 0)
