import numpy as np
import pytest
from scipy import sparse, stats

from scstrata_scoring.simulate import simulate_trajectory


def test_same_seed_gives_identical_data_and_other_seed_differs(genes):
    a = simulate_trajectory(genes, n_cells=100, seed=3)
    b = simulate_trajectory(genes, n_cells=100, seed=3)
    c = simulate_trajectory(genes, n_cells=100, seed=4)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obs["true_pseudotime"], b.obs["true_pseudotime"])
    np.testing.assert_array_equal(a.obs["time"], b.obs["time"])
    assert (a.X != c.X).nnz > 0


def test_shape_and_var_names_are_all_given_genes(genes):
    adata = simulate_trajectory(genes, n_cells=150, n_timepoints=5)
    assert adata.shape == (150, len(genes)) == (150, 19264)
    assert adata.var_names.tolist() == genes
    assert set(adata.obs["time"].unique()) == set(range(5))


def test_counts_are_sparse_nonnegative_integers(genes):
    adata = simulate_trajectory(genes, n_cells=200)
    assert sparse.isspmatrix_csr(adata.X) or isinstance(adata.X, sparse.csr_array)
    data = adata.X.data
    assert data.min() >= 0
    np.testing.assert_array_equal(data, np.round(data))
    # Only the expressed subset can be non-zero, so the matrix stays sparse.
    n_detected = int((np.asarray((adata.X != 0).sum(axis=0)).ravel() > 0).sum())
    assert 0 < n_detected <= adata.uns["simulation"]["n_expressed"] == 2000
    assert (adata.var["program"] == "unexpressed").sum() == len(genes) - 2000


def test_library_sizes_vary_between_cells(genes):
    adata = simulate_trajectory(genes, n_cells=300)
    totals = adata.obs["total_counts"].to_numpy()
    np.testing.assert_allclose(totals, np.asarray(adata.X.sum(axis=1)).ravel())
    assert totals.max() / totals.min() > 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_time_labels_track_true_pseudotime(genes, seed):
    adata = simulate_trajectory(genes, n_cells=600, seed=seed)
    pt = adata.obs["true_pseudotime"].to_numpy()
    assert pt.min() >= 0 and pt.max() <= 1
    rho = stats.spearmanr(adata.obs["time"], pt).statistic
    assert rho > 0.8  # measured 0.94 (seed 0)
    # Time points overlap in pseudotime: the labels are noisy, not a binning of it.
    late_of_time0 = pt[adata.obs["time"].to_numpy() == 0].max()
    early_of_time1 = pt[adata.obs["time"].to_numpy() == 1].min()
    assert late_of_time0 > early_of_time1


def test_cells_are_in_random_order_not_sorted_by_time(genes):
    adata = simulate_trajectory(genes, n_cells=300)
    time = adata.obs["time"].to_numpy()
    assert not np.all(np.diff(time) >= 0)
    position = np.arange(adata.n_obs)
    assert abs(stats.spearmanr(position, adata.obs["true_pseudotime"]).statistic) < 0.2


def test_program_genes_follow_pseudotime(genes):
    adata = simulate_trajectory(genes, n_cells=600, seed=0)
    pt = adata.obs["true_pseudotime"].to_numpy()
    x = adata.X.toarray()
    norm = x / x.sum(axis=1, keepdims=True)
    program = adata.var["program"].to_numpy()
    rising = norm[:, program == "rising"].sum(axis=1)
    falling = norm[:, program == "falling"].sum(axis=1)
    assert stats.spearmanr(rising, pt).statistic > 0.8
    assert stats.spearmanr(falling, pt).statistic < -0.8


def test_parameters_recorded_in_uns(genes):
    adata = simulate_trajectory(genes, n_cells=50, n_timepoints=3, n_programs=2, seed=7)
    params = adata.uns["simulation"]
    assert params["n_cells"] == 50
    assert params["n_timepoints"] == 3
    assert params["n_programs"] == 2
    assert params["seed"] == 7


def test_simulating_a_full_vocabulary_is_fast(genes):
    import time

    start = time.perf_counter()
    simulate_trajectory(genes, n_cells=600)
    assert time.perf_counter() - start < 2.0


def test_empty_gene_list_is_rejected():
    with pytest.raises(ValueError, match="genes"):
        simulate_trajectory([], n_cells=10)
