import types

import numpy as np
import pandas as pd
import pytest

from scstrata_scoring.pull import card_field, model_card, pull_layers
from scstrata_scoring.simulate import simulate_trajectory
from scstrata_scoring.simulate_perturbation import true_effect_embedding
from scstrata_scoring.summary import SUMMARY_COLUMNS, best_layer, summarise
from scstrata_scoring.sweep import (
    ROW_COLUMNS,
    SCORE_COLUMNS,
    LayerSet,
    score_perturbation,
    score_trajectory,
)

TRAJECTORY_METRICS = {
    "dpt_spearman",
    "time_spearman",
    "neighbourhood_overlap",
    "sequential_alignment",
    "dpt_unreachable_fraction",
    "effective_rank",
    "matrix_entropy",
}


@pytest.fixture(scope="module")
def small(genes, pca_baseline):
    adata = simulate_trajectory(genes, n_cells=250, seed=2)
    return adata, pca_baseline(adata)


@pytest.fixture(scope="module")
def trajectory_sweep(small):
    adata, pca = small
    rng = np.random.default_rng(0)
    layers = {
        0: pca[rng.permutation(adata.n_obs)],  # no trajectory at all
        1: pca + rng.normal(0, 2.0 * pca.std(), pca.shape),
        2: pca,  # the best
        4: pca + rng.normal(0, 1.0 * pca.std(), pca.shape),  # final layer, worse
    }
    return score_trajectory([LayerSet("toy", 4, layers)], adata, "time", n_boot=50, progress=False)


def test_trajectory_sweep_writes_the_documented_tidy_table(trajectory_sweep):
    df = trajectory_sweep.scores
    assert (
        list(df.columns)
        == SCORE_COLUMNS
        == [
            "model",
            "pooling",
            "layer",
            "depth",
            "recipe",
            "task",
            "context",
            "metric",
            "value",
            "ci_low",
            "ci_high",
            "null_z",
            "n_cells",
            "subsample_seed",
        ]
    )
    assert (df["n_cells"] == 250).all() and df["subsample_seed"].isna().all()
    assert set(df["model"]) == {"toy", "baseline:pca", "baseline:expression"}
    assert set(df.loc[df["model"] == "toy", "pooling"]) == {"official"}
    assert (df["recipe"] == "scstrata").all()
    assert set(df["metric"]) == TRAJECTORY_METRICS
    assert (df["task"] == "trajectory").all() and (df["context"] == "all").all()
    toy = df[df["model"] == "toy"]
    assert sorted(toy["layer"].unique()) == [0, 1, 2, 4]
    np.testing.assert_allclose(toy["depth"], toy["layer"].astype(float) / 4)
    base = df[df["model"].str.startswith("baseline:")]
    assert base["layer"].isna().all() and base["depth"].isna().all()
    assert df["null_z"].isna().all()
    scores = toy[toy["metric"] != "effective_rank"]
    scores = scores[scores["metric"] != "matrix_entropy"]
    assert (scores["ci_low"] <= scores["value"] + 1e-9).all()
    assert (scores["value"] <= scores["ci_high"] + 1e-9).all()


def test_trajectory_sweep_recovers_planted_order_and_pca_baseline(trajectory_sweep):
    df = trajectory_sweep.scores
    dpt = df[(df["model"] == "toy") & (df["metric"] == "dpt_spearman")].set_index("layer")["value"]
    assert dpt[2] > 0.9 and abs(dpt[0]) < 0.2  # measured 0.977, -0.050
    assert dpt[2] > dpt[4] > dpt[1]  # measured 0.977 > 0.952 > 0.683
    base = df[df["model"] == "baseline:pca"].set_index("metric")["value"]
    # The reference is computed on this representation: a ceiling by construction.
    assert base["dpt_spearman"] == pytest.approx(1.0)
    assert base["neighbourhood_overlap"] == 1.0
    assert base["time_spearman"] > 0.7  # measured 0.800
    expression = df[df["model"] == "baseline:expression"].set_index("metric")["value"]
    assert expression["dpt_spearman"] > 0.9  # measured 0.980


def test_summary_names_best_layer_and_a_significant_paired_gain(trajectory_sweep):
    summary = trajectory_sweep.summary
    assert list(summary.columns) == SUMMARY_COLUMNS
    row = summary.iloc[0]
    assert row["model"] == "toy" and row["best_layer"] == 2 and row["final_layer"] == 4
    assert row["gain"] > 0
    # measured gain 0.025, 95% CI [0.017, 0.035]
    assert 0 < row["gain_ci_low"] <= row["gain"] <= row["gain_ci_high"]
    assert bool(row["significant"])
    assert -1 <= row["effective_rank_rho"] <= 1


def test_gain_is_not_significant_when_the_final_layer_is_as_good(small):
    adata, pca = small
    rng = np.random.default_rng(1)
    noisy = {k: pca + rng.normal(0, 1.0 * pca.std(), pca.shape) for k in (1, 2)}
    result = score_trajectory(
        [LayerSet("twin", 2, noisy)], adata, "time", baselines=False, n_boot=50, progress=False
    )
    row = result.summary.iloc[0]  # measured gain 0.015, 95% CI [-0.022, 0.041]
    assert row["gain_ci_low"] <= 0 or row["best_layer"] == row["final_layer"]
    assert not (row["significant"] and row["best_layer"] != row["final_layer"])


def test_bootstrap_draws_are_seeded(small):
    adata, pca = small
    adata, pca = adata[:120].copy(), pca[:120]
    layers = [LayerSet("m", 1, {1: pca})]
    kwargs = dict(baselines=False, n_boot=20, progress=False)
    a = score_trajectory(layers, adata, "time", seed=3, **kwargs).scores
    b = score_trajectory(layers, adata, "time", seed=3, **kwargs).scores
    c = score_trajectory(layers, adata, "time", seed=4, **kwargs).scores
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["ci_low"].dropna(), c["ci_low"].dropna())


def test_trajectory_sweep_rejects_embeddings_of_other_cells(small):
    adata, pca = small
    with pytest.raises(ValueError, match="rows = cells"):
        score_trajectory([LayerSet("toy", 2, {1: pca[:10]})], adata, "time", progress=False)


@pytest.fixture(scope="module")
def perturbation_sweep(perturb_sim):
    truth = true_effect_embedding(perturb_sim, noise=0.5, seed=1)
    rng = np.random.default_rng(0)
    # A partial layer, the truth, and a final layer that lost it (cells shuffled).
    layers = {0: truth[:, :20], 1: truth, 2: truth[rng.permutation(perturb_sim.n_obs)]}
    return score_perturbation(
        [LayerSet("toy", 2, layers)], perturb_sim, n_boot=50, n_permutations=30, progress=False
    )


def test_perturbation_sweep_scores_every_state_with_null_and_interval(perturbation_sweep):
    df = perturbation_sweep.scores
    assert list(df.columns) == SCORE_COLUMNS
    assert list(dict.fromkeys(df["context"])) == ["Rest", "Stim8hr", "Stim48hr"]
    assert set(df["metric"]) == {"rsa_spearman", "rsa_p_value", "effective_rank", "matrix_entropy"}
    rsa = df[df["metric"] == "rsa_spearman"]
    assert rsa["null_z"].notna().all() and rsa["ci_low"].notna().all()
    p = df[df["metric"] == "rsa_p_value"]
    assert p["value"].between(1 / 31, 1).all() and p["ci_low"].isna().all()
    toy = rsa[(rsa["model"] == "toy") & (rsa["context"] == "Stim8hr")].set_index("layer")
    assert toy.loc[1, "value"] > 0.85 and toy.loc[1, "null_z"] > 3  # measured 0.917, 6.1
    assert abs(toy.loc[2, "value"]) < 0.3 and abs(toy.loc[2, "null_z"]) < 2.5  # -0.015, -0.31


def test_perturbation_summary_per_state_prefers_the_true_layer(perturbation_sweep):
    summary = perturbation_sweep.summary.set_index("context")
    for state in ("Stim8hr", "Stim48hr"):
        row = summary.loc[state]
        assert row["best_layer"] == 1 and row["final_layer"] == 2
        # measured gain 0.93 [0.36, 1.44] (Stim8hr), 0.69 [0.25, 1.20] (Stim48hr)
        assert row["gain_ci_low"] > 0 and bool(row["significant"])


def test_perturbation_sweep_skips_states_without_enough_perturbations(perturb_sim, caplog):
    subset = perturb_sim[perturb_sim.obs["state"] != "Rest"].copy()
    emb = true_effect_embedding(subset)
    result = score_perturbation(
        [LayerSet("m", 1, {1: emb})],
        subset,
        min_cells=50,
        n_boot=5,
        n_permutations=5,
        baselines=False,
        progress=False,
    )
    assert result.scores.empty and "skipped" in caplog.text


def _table(values, model="m", metric="dpt_spearman", context="all"):
    n_layers = len(values) - 1
    return pd.DataFrame(
        [
            (model, "S", k, k / n_layers, "scstrata", "trajectory", context, metric, v)
            + (np.nan,) * 3
            for k, v in enumerate(values)
        ],
        columns=ROW_COLUMNS,
    )


def test_best_layer_gain_over_final_layer():
    df = pd.concat([_table([0.2, 0.5, 0.8, 0.7, 0.4]), _table([0.9] * 5, metric="other")])
    best = best_layer(df)
    assert best["model"] == "m" and best["metric"] == "dpt_spearman"
    assert best["best_layer"] == 2
    assert best["best_depth"] == pytest.approx(0.5)
    assert best["best_score"] == pytest.approx(0.8)
    assert best["final_layer"] == 4
    assert best["final_score"] == pytest.approx(0.4)
    assert best["gain"] == pytest.approx(0.4)
    assert best["gain_pct"] == pytest.approx(100.0)


def test_best_layer_gives_no_percent_over_a_negative_or_near_zero_final_score():
    best = best_layer(_table([0.1, 0.3, -0.2]))
    assert best["gain"] == pytest.approx(0.5)
    assert np.isnan(best["gain_pct"])
    assert np.isnan(best_layer(_table([0.1, 0.3, 0.05]))["gain_pct"])
    assert best_layer(_table([0.1, 0.3, 0.1]))["gain_pct"] == pytest.approx(200.0)


def test_best_layer_at_final_layer_has_zero_gain_and_ties_go_shallow():
    assert best_layer(_table([0.1, 0.2, 0.9]))["gain"] == 0.0
    assert best_layer(_table([0.1, 0.9, 0.9]))["best_layer"] == 1


def test_best_layer_needs_a_model_and_context_when_table_has_several():
    df = pd.concat([_table([0.1, 0.9, 0.3], model="a"), _table([0.6, 0.2, 0.4], model="b")])
    with pytest.raises(ValueError, match="model="):
        best_layer(df)
    assert best_layer(df, model="b")["best_layer"] == 0
    two = pd.concat([_table([0.1, 0.9, 0.3], context="x"), _table([0.6, 0.2, 0.4], context="y")])
    with pytest.raises(ValueError, match="context="):
        best_layer(two)
    assert best_layer(two, context="y")["best_layer"] == 0


def test_summarise_without_draws_has_gain_but_no_interval():
    summary = summarise(_table([0.2, 0.9, 0.4]))
    row = summary.iloc[0]
    assert row["best_layer"] == 1 and row["gain"] == pytest.approx(0.5)
    assert np.isnan(row["gain_ci_low"]) and not row["significant"]


def test_card_field_reads_dicts_and_objects():
    card = {"name": "scfoundation", "n_layers": 12}
    obj = types.SimpleNamespace(name="scfoundation", n_layers=12)
    assert card_field(card, "n_layers") == card_field(obj, "n_layers") == 12


def test_pull_layers_returns_integer_layers_and_reuses_the_client_cache(
    small, service_url, tmp_path
):
    adata, _ = small
    cells = adata[:20].copy()
    layers = pull_layers(service_url, "scf", cells, "all", pooling="S", cache_dir=tmp_path)
    assert sorted(layers) == [0, 1, 2, 3]
    assert all(v.shape == (20, 32) for v in layers.values())
    stored = sorted(tmp_path.rglob("*.npz"))
    assert len(stored) == 1  # one chunk, its four layers in one file
    again = pull_layers(service_url, "scf", cells, "all", pooling="S", cache_dir=tmp_path)
    assert sorted(tmp_path.rglob("*.npz")) == stored  # served from the cache, nothing added
    for k in layers:
        np.testing.assert_array_equal(again[k], layers[k])


def test_model_card_finds_the_named_model(service_url):
    assert card_field(model_card(service_url, "scf"), "n_layers") == 3
    with pytest.raises(ValueError, match="not served"):
        model_card(service_url, "missing")
