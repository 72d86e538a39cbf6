import types

import numpy as np
import pandas as pd
import pytest

from scstrata_scoring.simulate import simulate_trajectory
from scstrata_scoring.sweep import (
    SCORE_COLUMNS,
    best_layer,
    card_field,
    model_card,
    pull_layers,
    score_layers,
)


@pytest.fixture(scope="module")
def small(genes, pca_baseline):
    adata = simulate_trajectory(genes, n_cells=250, seed=2)
    return adata, pca_baseline(adata)


def test_score_layers_returns_tidy_table_with_depth(small):
    adata, pca = small
    rng = np.random.default_rng(0)
    layers = {4: pca, 0: pca[rng.permutation(adata.n_obs)], 2: pca + rng.normal(0, 1, pca.shape)}
    df = score_layers(layers, adata, "time", n_layers=4, model="toy", progress=False)
    assert list(df.columns) == SCORE_COLUMNS == ["model", "layer", "depth", "metric", "value"]
    assert set(df["metric"]) == {"dpt_spearman", "time_spearman", "dpt_unreachable_fraction"}
    assert len(df) == 3 * 3
    assert (df["model"] == "toy").all()
    assert df["layer"].tolist() == sorted(df["layer"].tolist())
    np.testing.assert_allclose(df["depth"], df["layer"] / 4)
    dpt = df[df["metric"] == "dpt_spearman"].set_index("layer")["value"]
    assert dpt[4] > 0.9 and abs(dpt[0]) < 0.2
    assert best_layer(df)["best_layer"] == 4


def test_score_layers_rejects_embeddings_of_other_cells(small):
    adata, pca = small
    with pytest.raises(ValueError, match="rows = cells"):
        score_layers({1: pca[:10]}, adata, "time", n_layers=2, model="toy", progress=False)


def _table(values, model="m", metric="dpt_spearman"):
    n_layers = len(values) - 1
    return pd.DataFrame(
        [(model, k, k / n_layers, metric, v) for k, v in enumerate(values)], columns=SCORE_COLUMNS
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


def test_best_layer_relative_gain_uses_magnitude_of_negative_final_score():
    best = best_layer(_table([0.1, 0.3, -0.2]))
    assert best["gain"] == pytest.approx(0.5)
    assert best["gain_pct"] == pytest.approx(250.0)


def test_best_layer_at_final_layer_has_zero_gain_and_ties_go_shallow():
    assert best_layer(_table([0.1, 0.2, 0.9]))["gain"] == 0.0
    assert best_layer(_table([0.1, 0.9, 0.9]))["best_layer"] == 1


def test_best_layer_needs_a_model_when_table_has_several():
    df = pd.concat([_table([0.1, 0.9, 0.3], model="a"), _table([0.6, 0.2, 0.4], model="b")])
    with pytest.raises(ValueError, match="model="):
        best_layer(df)
    assert best_layer(df, model="b")["best_layer"] == 0


def test_card_field_reads_dicts_and_objects():
    card = {"name": "scfoundation", "n_layers": 12}
    obj = types.SimpleNamespace(name="scfoundation", n_layers=12)
    assert card_field(card, "n_layers") == card_field(obj, "n_layers") == 12


def test_pull_layers_returns_integer_layers_from_the_real_service(small, service_url):
    adata, _ = small
    layers = pull_layers(service_url, "scf", adata[:20].copy(), "all", pooling="S")
    assert sorted(layers) == [0, 1, 2, 3]
    assert all(v.shape == (20, 32) for v in layers.values())


def test_model_card_finds_the_named_model(service_url):
    assert card_field(model_card(service_url, "scf"), "n_layers") == 3
    with pytest.raises(ValueError, match="not served"):
        model_card(service_url, "missing")
