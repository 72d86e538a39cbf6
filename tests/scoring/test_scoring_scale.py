"""Scoring at real sizes: past scanpy's 8,192-cell switch, approximate kNN, bounded memory.

The approximate search (pynndescent) is compiled by numba on first use (about 40 s here), so
every test that needs it shares one module-scoped search.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import sparse, stats
from threadpoolctl import threadpool_info, threadpool_limits

from scstrata_scoring.baselines import expression_matrix, log_normalise
from scstrata_scoring.neighbours import (
    EXACT_MAX_CELLS,
    SPARSE_PCA_COMPONENTS,
    check_embedding,
    nearest_neighbours,
    overlap_of_neighbours,
    scanpy_neighbours,
    sparse_pca,
)
from scstrata_scoring.resample import BootstrapDraws, bootstrap_indices
from scstrata_scoring.simulate import simulate_trajectory
from scstrata_scoring.subsample import sample_cells, subsample_note, take_rows
from scstrata_scoring.sweep import LayerSet, score_trajectory
from scstrata_scoring.threads import THREADS_ENV, apply_threads, thread_count
from scstrata_scoring.trajectory import _dpt

# Stated recall of the approximate search against exact neighbours (k = 30) on 3,000 cells of
# isotropic Gaussian noise in 32 dimensions, the hard case (no low-dimensional structure):
# measured 0.994 when written (0.9999 at 10 dimensions, 0.9998 for 8 clusters in 64).
MIN_RECALL = 0.98


def _curve(n: int, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells along a 1-D curve embedded in ``dims`` dimensions, with noise; and their position."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 1, n))
    freqs = rng.uniform(0.5, 3.0, dims)
    x = np.sin(np.outer(t, freqs) * np.pi) + rng.normal(0, 0.05, (n, dims))
    return x.astype(np.float32), t


@pytest.fixture(scope="module")
def cloud() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3000, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def approximate(cloud):
    return nearest_neighbours(cloud, 30, method="approximate", seed=0)


def test_trajectory_sweep_runs_past_scanpys_8192_cell_switch(genes, pca_baseline):
    # With the pinned scanpy 1.11.5 / pynndescent 0.7.0 / scipy 1.17.1, scanpy's own search
    # fails at >= 8,192 cells ('csr_array' object has no attribute 'getnnz').
    adata = simulate_trajectory(genes[:300], n_cells=9000, n_expressed=200, seed=0)
    layer = pca_baseline(adata, n_top_genes=150, n_pcs=8).astype(np.float32)
    result = score_trajectory(
        [LayerSet("toy", 1, {1: layer})],
        adata,
        "time",
        n_boot=10,
        n_top_genes=150,
        n_pcs=8,
        progress=False,
    )
    scores = result.scores.set_index(["model", "metric"])["value"]
    assert scores[("toy", "dpt_spearman")] > 0.8
    assert scores[("toy", "dpt_unreachable_fraction")] == 0.0
    assert scores[("baseline:pca", "dpt_spearman")] == pytest.approx(1.0)
    assert np.isfinite(scores[("baseline:expression", "time_spearman")])


def test_approximate_neighbours_recall_exact_ones(cloud, approximate):
    exact = nearest_neighbours(cloud, 30, method="exact")
    assert exact.exact and not approximate.exact
    recall = overlap_of_neighbours(approximate.indices, exact.indices).mean()
    assert recall >= MIN_RECALL, recall
    n = cloud.shape[0]
    assert not (approximate.indices == np.arange(n)[:, None]).any()
    assert (np.diff(approximate.distances, axis=1) >= 0).all()  # nearest first


def test_approximate_search_is_seeded(cloud, approximate):
    again = nearest_neighbours(cloud, 30, method="approximate", seed=0)
    np.testing.assert_array_equal(again.indices, approximate.indices)


def test_dpt_on_the_approximate_graph_matches_dpt_on_the_exact_one(
    genes, pca_baseline, approximate
):
    adata = simulate_trajectory(genes[:300], n_cells=3000, n_expressed=200, seed=5)
    x = pca_baseline(adata, n_top_genes=150, n_pcs=20)
    truth = adata.obs["true_pseudotime"].to_numpy()
    root = int(np.argmin(truth))
    exact_pt = _dpt(x, root, 30, nearest_neighbours(x, 29, method="exact"))
    approx_pt = _dpt(x, root, 30, nearest_neighbours(x, 29, method="approximate"))
    assert np.isfinite(approx_pt).all()
    assert stats.spearmanr(exact_pt, approx_pt).statistic > 0.99
    assert stats.spearmanr(approx_pt, truth).statistic > 0.9


def test_auto_search_is_exact_where_cheap_and_approximate_where_quadratic(approximate):
    small = np.random.default_rng(0).normal(size=(500, 40))
    assert nearest_neighbours(small, 5).exact
    # Low-dimensional dense data: a k-d tree is exact in about n log n at any size.
    low_dims, _ = _curve(EXACT_MAX_CELLS + 1, 3, seed=1)
    assert nearest_neighbours(low_dims, 5).exact
    high_dims, _ = _curve(EXACT_MAX_CELLS + 1, 20, seed=1)
    assert not nearest_neighbours(high_dims, 5).exact


def test_scanpy_gets_our_graph_with_the_cell_first_and_a_matrix_it_can_read(cloud):
    nn = nearest_neighbours(cloud[:200], 10, method="exact")
    graph = scanpy_neighbours(nn, 5).fit_transform(None)
    assert isinstance(graph, sparse.csr_matrix) and hasattr(graph, "getnnz")
    assert (graph.getnnz(axis=1) == 5).all()
    cols = graph.indices.reshape(200, 5)
    np.testing.assert_array_equal(cols[:, 0], np.arange(200))
    np.testing.assert_array_equal(cols[:, 1:], nn.indices[:, :4])
    np.testing.assert_array_equal(graph.data.reshape(200, 5)[:, 0], 0.0)
    with pytest.raises(ValueError, match="n_neighbors"):
        scanpy_neighbours(nn, 12)


def test_overlap_of_neighbours_agrees_with_set_intersection():
    rng = np.random.default_rng(3)
    a = np.array([rng.choice(100, 7, replace=False) for _ in range(50)])
    b = np.array([rng.choice(100, 7, replace=False) for _ in range(50)])
    expected = [len(set(x) & set(y)) / 7 for x, y in zip(a, b)]
    np.testing.assert_allclose(overlap_of_neighbours(a, b), expected)
    np.testing.assert_array_equal(overlap_of_neighbours(a, a), 1.0)


def test_embeddings_are_checked_without_a_float64_copy():
    x = np.ones((10, 4), dtype=np.float32)
    assert check_embedding(x) is x
    csr = sparse.random(10, 50, density=0.1, format="csr", dtype=np.float32, random_state=0)
    checked = check_embedding(csr)
    assert sparse.issparse(checked) and checked.dtype == np.float32
    csr.data[0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        check_embedding(csr)


def test_sparse_expression_baseline_has_the_dense_neighbours(genes):
    adata = simulate_trajectory(genes[:300], n_cells=300, n_expressed=200, seed=4)
    expression = expression_matrix(log_normalise(adata))
    assert sparse.issparse(expression) and expression.dtype == np.float32
    on_sparse = nearest_neighbours(expression, 15)
    on_dense = nearest_neighbours(expression.toarray().astype(np.float64), 15)
    assert overlap_of_neighbours(on_sparse.indices, on_dense.indices).mean() > 0.999
    np.testing.assert_allclose(on_sparse.distances, on_dense.distances, rtol=1e-4)


def test_sparse_expression_searched_in_its_pca_gives_the_same_pseudotime(genes):
    # The route the expression baseline takes above EXACT_MAX_CELLS, forced on small data.
    adata = simulate_trajectory(genes[:3000], n_cells=1500, n_expressed=1000, seed=4)
    expression = expression_matrix(log_normalise(adata))
    assert expression.shape[1] > SPARSE_PCA_COMPONENTS
    root = int(np.argmin(adata.obs["time"].to_numpy()))
    exact = nearest_neighbours(expression, 29, method="exact")
    reduced = nearest_neighbours(expression, 29, method="approximate")
    assert exact.exact and not reduced.exact
    # Far more shared neighbours than chance (29 / 1499), not all: the PCA drops the noise
    # that picks many exact neighbours in every gene (0.5 measured when written).
    assert overlap_of_neighbours(reduced.indices, exact.indices).mean() > 0.35
    exact_pt, reduced_pt = _dpt(expression, root, 30, exact), _dpt(expression, root, 30, reduced)
    assert stats.spearmanr(exact_pt, reduced_pt).statistic > 0.93
    truth = adata.obs["true_pseudotime"].to_numpy()
    exact_rho = stats.spearmanr(exact_pt, truth).statistic
    assert stats.spearmanr(reduced_pt, truth).statistic > exact_rho - 0.02
    pcs = sparse_pca(expression)
    assert pcs.shape == (1500, SPARSE_PCA_COMPONENTS) and pcs.dtype == np.float32


def test_bootstrap_draws_do_not_depend_on_the_batch_size():
    whole = np.vstack(list(BootstrapDraws(1000, 30, (7, 0)).batches()))
    batches = list(BootstrapDraws(1000, 30, (7, 0), batch_indices=4000).batches())
    assert max(b.shape[0] for b in batches) == 4  # 4,000 indices = 4 draws of 1,000
    np.testing.assert_array_equal(np.vstack(batches), whole)
    assert whole.shape == (30, 1000) and whole.min() >= 0 and whole.max() < 1000
    assert not np.array_equal(whole, np.vstack(list(BootstrapDraws(1000, 30, (8, 0)).batches())))
    # Each draw resamples uniformly: its mean index is near (n - 1) / 2.
    assert abs(whole.mean() - 499.5) < 10
    assert next(BootstrapDraws(5, 0, 0).batches()).shape == (0, 5)


def test_bootstrap_map_joins_statistics_in_draw_order():
    draws = BootstrapDraws(50, 9, 1, batch_indices=100)
    values = np.arange(50.0)
    joined = draws.map(lambda idx: {"mean": values[idx].mean(axis=1)})
    expected = np.concatenate([values[b].mean(axis=1) for b in draws.batches()])
    np.testing.assert_array_equal(joined["mean"], expected)
    assert joined["mean"].shape == (9,)
    # the perturbation task's small resamples keep their one-array form
    assert bootstrap_indices(7, 3, seed=0).shape == (3, 7)


def test_thread_count_reads_the_variable_else_the_cpus_we_may_use():
    assert thread_count({THREADS_ENV: "3"}) == 3
    assert thread_count({}) == len(os.sched_getaffinity(0))
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=THREADS_ENV):
            thread_count({THREADS_ENV: bad})


def test_apply_threads_limits_blas_and_numba():
    import numba

    before_numba = numba.get_num_threads()
    before_blas = threadpool_info()
    try:
        assert apply_threads(1) == 1
        assert numba.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    finally:
        numba.set_num_threads(before_numba)
        threadpool_limits({pool["prefix"]: pool["num_threads"] for pool in before_blas})


def test_the_diffusion_map_runs_on_one_blas_thread_whatever_the_setting(monkeypatch):
    # With 2 BLAS threads on a loaded host, DPT took 4-5 x the CPU time (bench/RESULTS.md).
    import scanpy.neighbors

    seen = []
    original = scanpy.neighbors.Neighbors.compute_eigen

    def compute_eigen(self, *args, **kwargs):
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(scanpy.neighbors.Neighbors, "compute_eigen", compute_eigen)
    x, _ = _curve(300, 8, seed=2)

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    with threadpool_limits(2):
        before = blas_threads()
        pt = _dpt(x, 0, 15)
        after = blas_threads()
    assert seen and set(seen) == {1}
    assert after == before  # the caller's setting is restored
    assert np.isfinite(pt).all() and pt.max() == 1.0


def test_scoring_and_its_thread_setting_do_not_import_torch_or_the_service():
    code = (
        "import sys, scstrata_scoring.sweep, scstrata_scoring.threads as t; t.apply_threads(1); "
        "print(sorted(m for m in ('torch', 'scstrata_service') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cell_sample_is_seeded_sorted_and_all_cells_when_it_fits():
    a = sample_cells(1000, 100, seed=3)
    assert a.n_cells == 100 and a.seed == 3 and a.n_total == 1000
    assert (np.diff(a.cells) > 0).all() and a.cells.max() < 1000
    np.testing.assert_array_equal(a.cells, sample_cells(1000, 100, seed=3).cells)
    assert not np.array_equal(a.cells, sample_cells(1000, 100, seed=4).cells)
    for size in (None, 1000, 5000):
        whole = sample_cells(1000, size, seed=3)
        assert whole.cells is None and whole.n_cells == 1000 and whole.seed is None
    with pytest.raises(ValueError, match="at least 3"):
        sample_cells(1000, 2)


def test_take_rows_reads_only_the_sampled_rows_of_each_kind(tmp_path):
    import zarr

    sample = sample_cells(50, 10, seed=0)
    dense = np.arange(200.0).reshape(50, 4)
    expected = dense[sample.cells]
    np.testing.assert_array_equal(take_rows(dense, sample), expected)
    np.testing.assert_array_equal(take_rows(sparse.csr_matrix(dense), sample).toarray(), expected)
    stored = zarr.open_array(tmp_path / "layer.zarr", mode="w", shape=dense.shape, dtype="f8")
    stored[:] = dense
    np.testing.assert_array_equal(take_rows(stored, sample), expected)
    assert take_rows(dense, sample_cells(50, None)) is dense


def test_trajectory_sweep_on_a_subsample_equals_scoring_those_cells(genes, pca_baseline, tmp_path):
    from scstrata_scoring.report import write_report

    adata = simulate_trajectory(genes[:300], n_cells=300, n_expressed=200, seed=6)
    layer = pca_baseline(adata, n_top_genes=150, n_pcs=10)
    kwargs = dict(n_boot=20, n_top_genes=150, n_pcs=10, progress=False)
    sampled = score_trajectory(
        [LayerSet("toy", 2, {2: layer})],
        adata,
        "time",
        subsample=120,
        subsample_seed=5,
        **kwargs,
    ).scores
    cells = sample_cells(300, 120, seed=5).cells
    direct = score_trajectory(
        [LayerSet("toy", 2, {2: layer[cells]})], adata[cells].copy(), "time", **kwargs
    ).scores
    assert (sampled["n_cells"] == 120).all() and (sampled["subsample_seed"] == 5).all()
    assert (direct["n_cells"] == 120).all() and direct["subsample_seed"].isna().all()
    np.testing.assert_allclose(sampled["value"], direct["value"])
    note = subsample_note(sampled)
    assert "120 cells" in note and "seed 5" in note
    assert subsample_note(direct) is None
    assert note in write_report(sampled, tmp_path).read_text()
