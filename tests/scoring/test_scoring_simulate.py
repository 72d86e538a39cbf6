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


def test_branching_trajectory_splits_cells_and_genes_into_two_branches(genes):
    adata = simulate_trajectory(genes, n_cells=400, seed=0, topology="branching")
    pt = adata.obs["true_pseudotime"].to_numpy()
    branch = adata.obs["branch"].astype(str).to_numpy()
    assert set(branch) == {"trunk", "A", "B"}
    assert (pt[branch == "trunk"] <= 0.4).all() and (pt[branch != "trunk"] > 0.4).all()
    x = adata.X.toarray()
    norm = x / x.sum(axis=1, keepdims=True)
    late = pt > 0.7
    for name, other in (("A", "B"), ("B", "A")):
        genes_of = (adata.var["branch"] == name).to_numpy()
        assert genes_of.sum() > 100
        own = norm[late & (branch == name)][:, genes_of].sum(axis=1).mean()
        foreign = norm[late & (branch == other)][:, genes_of].sum(axis=1).mean()
        assert own > 1.5 * foreign  # rise only in their branch; measured 2.65 (A), 2.26 (B)


def test_linear_data_of_a_seed_do_not_depend_on_the_branching_option(genes):
    linear = simulate_trajectory(genes, n_cells=80, seed=5)
    assert (linear.obs["branch"] == "trunk").all()
    branching = simulate_trajectory(genes, n_cells=80, seed=5, topology="branching")
    np.testing.assert_array_equal(linear.obs["true_pseudotime"], branching.obs["true_pseudotime"])
    with pytest.raises(ValueError, match="topology"):
        simulate_trajectory(genes, n_cells=10, topology="tree")


def test_perturbation_screen_layout_and_ground_truth(perturb_sim, genes):
    from scstrata_scoring.simulate_perturbation import true_effect_embedding, true_effects

    adata = perturb_sim
    assert adata.n_vars == len(genes)
    assert list(adata.obs["state"].cat.categories) == ["Rest", "Stim8hr", "Stim48hr"]
    counts = adata.obs.groupby(["state", "perturbation"], observed=True).size()
    assert (counts.xs("non-targeting", level="perturbation") == 40).all()
    assert counts.drop("non-targeting", level="perturbation").eq(20).all()
    names = adata.uns["simulation"]["perturbations"]
    assert len(names) == 10 and set(names) <= set(genes)  # targets are real symbols
    effects = true_effects(adata, "Stim8hr")
    assert effects.shape == (10, 2000) and list(effects.index) == list(names)
    emb = true_effect_embedding(adata)
    control = (adata.obs["perturbation"] == "non-targeting").to_numpy()
    assert (emb[control] == 0).all() and np.abs(emb[~control]).sum(axis=1).min() > 0


def test_perturbation_knockdown_lowers_the_target(perturb_sim):
    x = perturb_sim.X.toarray()
    norm = x / x.sum(axis=1, keepdims=True)
    labels = perturb_sim.obs["perturbation"].astype(str).to_numpy()
    lowered = 0
    for name in perturb_sim.uns["simulation"]["perturbations"]:
        col = perturb_sim.var_names.get_loc(name)
        lowered += norm[labels == name, col].mean() < norm[labels == "non-targeting", col].mean()
    assert lowered == 10


def test_perturbation_simulation_is_seeded(genes):
    from scstrata_scoring.simulate_perturbation import simulate_perturbation

    kwargs = dict(n_perturbations=4, cells_per_perturbation=5, n_control=6, states=["a", "b"])
    a = simulate_perturbation(genes, seed=1, **kwargs)
    b = simulate_perturbation(genes, seed=1, **kwargs)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    assert a.n_obs == 2 * (6 + 4 * 5)
