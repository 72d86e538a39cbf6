"""The study recipe equals a direct computation of the study's formulas, step by step.

Each direct computation below follows the study's published method as written in its code
(scanpy calls on one AnnData, scipy's spearmanr, pandas ranks, padded neighbour tables) and is
independent of the package's own implementation, which must agree with it.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse, stats

from scstrata_scoring.baselines import log_normalise
from scstrata_scoring.perturbation import perturbation_reference, rank_cosine_similarity
from scstrata_scoring.recipe import (
    padded_neighbours,
    padded_overlap_per_cell,
    service_request,
    study_layer_number,
)
from scstrata_scoring.simulate import simulate_trajectory
from scstrata_scoring.sweep import LayerSet, score_perturbation, score_trajectory
from scstrata_scoring.trajectory import (
    trajectory_evidence,
    trajectory_reference,
    trajectory_statistics,
)

N_TOP = 300  # HVGs, few enough that the undetected genes shift the selection


@pytest.fixture(scope="module")
def traj(genes):
    # 1,500 expressed genes and 600 undetected ones: the study kept those for the HVGs.
    sim = simulate_trajectory(genes[:1500], n_cells=180, seed=3)
    zeros = sparse.csr_matrix((sim.n_obs, 600), dtype=sim.X.dtype)
    adata = ad.AnnData(
        X=sparse.hstack([sim.X, zeros], format="csr"),
        obs=sim.obs,
        var=pd.DataFrame(index=list(sim.var_names) + list(genes[1500:2100])),
    )
    assert (np.asarray((adata.X != 0).sum(axis=0)).ravel() == 0).sum() == 600
    return adata


def _split_layer(adata):
    """A layer whose kNN graph falls apart: mid-trajectory cells sit far from the rest."""
    pt = adata.obs["true_pseudotime"].to_numpy()
    emb = np.column_stack([pt, np.random.default_rng(1).normal(scale=0.05, size=(pt.size, 3))])
    emb[(pt > 0.3) & (pt < 0.6)] += 50.0
    return emb


def _study_trajectory(adata, layer, n_top=N_TOP, k=30):
    """The study's pseudotime steps on one AnnData, as its code ran them."""
    data = adata.copy()
    sc.pp.normalize_total(data, target_sum=1e4)
    sc.pp.log1p(data)
    sc.pp.highly_variable_genes(data, n_top_genes=n_top, subset=True)  # flavour seurat
    sc.pp.pca(data, n_comps=50, svd_solver="arpack", random_state=0)
    time = data.obs["time"].to_numpy()
    data.uns["iroot"] = int(np.flatnonzero(time == time.min())[0])
    data.obsm["X_layer_0"] = layer
    sc.pp.neighbors(data, n_neighbors=k, use_rep="X_pca", key_added="ref")
    sc.tl.diffmap(data, neighbors_key="ref")
    sc.tl.dpt(data, neighbors_key="ref")
    ref_pt = data.obs["dpt_pseudotime"].to_numpy().copy()
    sc.pp.neighbors(data, n_neighbors=k, use_rep="X_layer_0", key_added="temp")
    sc.tl.diffmap(data, neighbors_key="temp")
    sc.tl.dpt(data, neighbors_key="temp")
    layer_pt = data.obs["dpt_pseudotime"].to_numpy()
    valid = np.isfinite(ref_pt) & np.isfinite(layer_pt)
    corr = stats.spearmanr(ref_pt[valid], layer_pt[valid])[0]

    def table(distances):
        out = np.zeros((distances.shape[0], k), dtype=int)
        for i in range(distances.shape[0]):
            row = distances[i].indices
            out[i, : min(len(row), k)] = row[:k]
        return out

    ref_t, layer_t = table(data.obsp["ref_distances"]), table(data.obsp["temp_distances"])
    overlap = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ref_t, layer_t)])
    return corr, overlap, float(np.mean(~np.isfinite(layer_pt)))


def test_study_trajectory_equals_the_studys_steps_on_a_graph_with_unreachable_cells(traj):
    layer = _split_layer(traj)
    expected_corr, expected_overlap, unreachable = _study_trajectory(traj, layer)
    assert 0.1 < unreachable < 0.9  # the case the recipes treat differently

    ref = trajectory_reference(traj, "time", n_top_genes=N_TOP, recipe="study")
    scores = trajectory_statistics(trajectory_evidence(layer, ref), ref)
    assert scores["dpt_spearman"][0] == pytest.approx(expected_corr, abs=1e-6)
    assert scores["neighbourhood_overlap"][0] == pytest.approx(expected_overlap, abs=1e-9)
    assert scores["dpt_unreachable_fraction"][0] == pytest.approx(unreachable)

    # scstrata's recipe ranks the unreachable cells last instead: a different number.
    own = trajectory_reference(traj, "time", n_top_genes=N_TOP)
    own_scores = trajectory_statistics(trajectory_evidence(layer, own), own)
    assert abs(own_scores["dpt_spearman"][0] - expected_corr) > 0.01


def test_study_reference_selects_hvgs_among_all_genes(traj):
    kept = log_normalise(traj, drop_undetected=False)
    dropped = log_normalise(traj)
    assert kept.n_vars == traj.n_vars and dropped.n_vars < traj.n_vars
    hvg_all = sc.pp.highly_variable_genes(kept, n_top_genes=N_TOP, inplace=False)
    hvg_det = sc.pp.highly_variable_genes(dropped, n_top_genes=N_TOP, inplace=False)
    chosen_all = set(kept.var_names[hvg_all["highly_variable"].to_numpy()])
    chosen_det = set(dropped.var_names[hvg_det["highly_variable"].to_numpy()])
    assert chosen_all != chosen_det  # the undetected genes move the mean bins
    study = trajectory_reference(traj, "time", n_top_genes=N_TOP, recipe="study")
    own = trajectory_reference(traj, "time", n_top_genes=N_TOP)
    assert not np.allclose(np.abs(study.pca[:, 0]), np.abs(own.pca[:, 0]))


def test_padded_overlap_counts_cell_zero_as_shared_like_the_study():
    # Four cells, k = 3, each storing its 2 nearest other cells (the cell itself counts).
    table = padded_neighbours(np.array([[1, 2], [0, 3], [1, 3], [1, 2]]), 3)
    np.testing.assert_array_equal(table, [[1, 2, 0], [0, 3, 0], [1, 3, 0], [1, 2, 0]])
    other = padded_neighbours(np.array([[1, 3], [0, 2], [0, 3], [1, 2]]), 3)
    # By hand: {0,1,2}&{0,1,3}=2; {0,3}&{0,2}=1; {0,1,3}&{0,3}=2; {0,1,2}&{0,1,2}=3.
    per_cell = padded_overlap_per_cell(table, other, 3)
    np.testing.assert_allclose(per_cell, [2 / 3, 1 / 3, 2 / 3, 1.0])
    # Disjoint true neighbours still share the padding cell 0: 1/k, not 0.
    assert padded_overlap_per_cell(np.array([[1, 2, 0]]), np.array([[3, 4, 0]]), 3)[0] == 1 / 3


def _screen(seed=0):
    """A hand-sized raw-count screen: 4 perturbations x 6 cells, 10 controls, 40 genes."""
    rng = np.random.default_rng(seed)
    n_genes = 40
    base = rng.gamma(2.0, 3.0, size=n_genes)
    labels, rows = [], []
    for name, scale in (("non-targeting", 1.0), ("A", 1.0), ("B", 1.0), ("C", 1.0), ("D", 1.0)):
        effect = np.ones(n_genes)
        if name != "non-targeting":
            effect[rng.choice(n_genes, 8, replace=False)] = rng.uniform(0.1, 4.0, 8) * scale
        n = 10 if name == "non-targeting" else 6
        rows.append(rng.poisson(base * effect, size=(n, n_genes)))
        labels += [name] * n
    counts = np.vstack(rows).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    var = pd.DataFrame(index=[f"G{j}" for j in range(n_genes)])
    return counts, obs, var


def _study_reference(counts, labels, n_top):
    """The study's reference: raw mean shifts, |t| with +1e-8, pandas ranks, cosine."""
    labels = np.asarray(labels)
    counts = np.asarray(counts, dtype=np.float64)
    control = counts[labels == "non-targeting"]
    profiles = {}
    for name in sorted(set(labels) - {"non-targeting"}):
        cells = counts[labels == name]
        lfc = cells.mean(0) - control.mean(0)
        sd = np.sqrt(control.var(0, ddof=1) / len(control) + cells.var(0, ddof=1) / len(cells))
        t = np.abs(lfc / (sd + 1e-8))
        top = np.argsort(-t, kind="stable")[:n_top]
        profiles[name] = pd.Series(lfc[top], index=[f"G{j}" for j in top])
    genes = sorted(set().union(*[set(p.index) for p in profiles.values()]))
    table = pd.DataFrame({p: s.reindex(genes, fill_value=0) for p, s in profiles.items()}).T
    ranks = table.rank(axis=1, method="average").to_numpy()
    unit = ranks / np.linalg.norm(ranks, axis=1, keepdims=True)
    return list(table.index), unit @ unit.T


def test_study_perturbation_equals_the_studys_formulas_on_raw_counts():
    counts, obs, var = _screen()
    names, expected = _study_reference(counts, obs["perturbation"], n_top=10)
    ref = perturbation_reference(
        sparse.csr_matrix(counts), obs["perturbation"], "non-targeting", var.index, 5, 10, "study"
    )
    assert ref.perturbations == names
    np.testing.assert_allclose(ref.similarity, expected, atol=1e-12)
    assert (ref.similarity > 0).all()  # uncentred ranks: never a negative "correlation"

    # The whole sweep: the layer's centroid cosines against this reference, Spearman.
    emb = np.random.default_rng(5).normal(size=(counts.shape[0], 6)) + np.repeat(
        np.random.default_rng(6).normal(size=(5, 6)), [10, 6, 6, 6, 6], axis=0
    )
    adata = ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)
    # X holds something else: the study reads raw when the file has one.
    adata.raw = adata.copy()
    adata.X = sparse.csr_matrix(np.log1p(counts) * 3.0)
    result = score_perturbation(
        [LayerSet("m", 1, {1: emb})],
        adata,
        state_key=None,
        n_top_genes=10,
        n_permutations=5,
        n_boot=5,
        baselines=False,
        progress=False,
        recipe="study",
    )
    labels = obs["perturbation"].to_numpy()
    centroids = np.array([emb[labels == p].mean(0) for p in names])
    unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    iu = np.triu_indices(len(names), k=1)
    direct = stats.spearmanr(expected[iu], (unit @ unit.T)[iu])[0]
    rsa = result.scores.query("metric == 'rsa_spearman'")
    assert rsa["value"].iloc[0] == pytest.approx(direct, abs=1e-9)
    assert set(rsa["recipe"]) == {"study"}


def test_rank_cosine_is_spearman_only_after_centring():
    profiles = np.array([[1.0, 2.0, 3.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    ranks = stats.rankdata(profiles, axis=1)
    cos = ranks[0] @ ranks[1] / (np.linalg.norm(ranks[0]) * np.linalg.norm(ranks[1]))
    assert rank_cosine_similarity(profiles)[0, 1] == pytest.approx(cos)
    assert stats.spearmanr(profiles[0], profiles[1])[0] == pytest.approx(0.2)
    assert cos == pytest.approx(26 / 30)  # ranks (2,3,4,1) and (4,3,2,1)


def _card(family, final_norm=True, **extra):
    card = {"name": "m", "family": family, "n_layers": 4, "default_pooling": "official"}
    if final_norm is not None:
        card["final_norm"] = final_norm
    return {**card, **extra}


def test_study_request_asks_for_each_blocks_own_token():
    scf = service_request(_card("scfoundation"), "study")
    assert (scf.pooling, scf.layers, scf.options) == ("S", [1, 2, 3, 4], {"final_norm": False})
    tahoe = service_request(_card("tahoe"), "study", layers=[2, 4])
    assert (tahoe.pooling, tahoe.layers, tahoe.options) == ("cls", [2, 4], {"final_norm": False})
    # A family without a final norm needs no option; a pooling can be named for any family.
    plain = service_request(_card("geneformer", final_norm=False), "study", pooling="cls")
    assert (plain.pooling, plain.options) == ("cls", {})
    own = service_request(_card("scfoundation"), "scstrata")
    assert (own.pooling, own.layers, own.options) == ("official", "all", {})
    assert [study_layer_number(k) for k in scf.layers] == [0, 1, 2, 3]  # X_layer_i = block i+1


def test_study_request_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match=r"geneformer.*--pooling"):
        service_request(_card("geneformer", final_norm=False), "study")
    with pytest.raises(ValueError, match="no 'final_norm' field"):
        service_request(_card("scfoundation", final_norm=None), "study")
    with pytest.raises(ValueError, match="layer 0"):
        service_request(_card("scfoundation"), "study", layers=[0, 2])
    with pytest.raises(ValueError, match="not a block"):
        study_layer_number(0)


def test_study_numbering_keeps_depth_of_the_block(traj):
    emb = _split_layer(traj)
    result = score_trajectory(
        [LayerSet("m", 4, {0: emb, 3: emb}, "S", "study")],
        traj,
        "time",
        baselines=False,
        n_boot=5,
        progress=False,
        recipe="study",
    )
    depths = result.scores.drop_duplicates("layer").set_index("layer")["depth"]
    assert depths.to_dict() == {0: 0.25, 3: 1.0}
    assert set(result.scores["pooling"]) == {"S"}
    assert result.summary.loc[0, "final_layer"] == 3
