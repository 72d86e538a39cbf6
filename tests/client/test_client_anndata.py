import anndata as ad
import numpy as np
import pytest

from scstrata_client._anndata import obsm_key, write_embeddings


def test_obsm_key_for_official_pooling_has_no_suffix():
    assert obsm_key("scfoundation", 12) == "X_scfoundation_layer12"
    assert obsm_key("scfoundation", 0, "official") == "X_scfoundation_layer0"


def test_obsm_key_for_other_pooling_appends_it():
    assert obsm_key("scfoundation", 3, "mean") == "X_scfoundation_layer3_mean"


def test_obsm_key_never_contains_a_slash():
    assert obsm_key("tahoe-x1/70m", 2) == "X_tahoe-x1_70m_layer2"


def _layers(n_cells=5, dim=4):
    rng = np.random.default_rng(1)
    return {k: rng.normal(size=(n_cells, dim)).astype(np.float32) for k in (0, 6, 12)}


def test_each_layer_is_written_to_obsm_with_provenance_in_uns(tmp_path):
    adata = ad.AnnData(X=np.ones((5, 3), dtype=np.float32))
    layers = _layers()
    keys = write_embeddings(
        adata,
        layers,
        url="http://svc:3000",
        model="scfoundation",
        pooling="S",
        options={"pre_normalized": False},
        n_layers=12,
        n_unmapped_genes=3,
    )
    assert keys == [
        "X_scfoundation_layer0_S",
        "X_scfoundation_layer6_S",
        "X_scfoundation_layer12_S",
    ]
    np.testing.assert_array_equal(adata.obsm["X_scfoundation_layer6_S"], layers[6])
    record = adata.uns["scstrata"]["X_scfoundation_layer6_S"]
    assert record["url"] == "http://svc:3000"
    assert record["model"] == "scfoundation"
    assert record["layer"] == 6
    assert record["pooling"] == "S"
    assert record["dim"] == 4
    assert record["n_layers"] == 12
    assert record["depth"] == pytest.approx(0.5)
    assert record["n_unmapped_genes"] == 3
    assert record["options"] == '{"pre_normalized": false}'


def test_provenance_survives_an_h5ad_round_trip(tmp_path):
    adata = ad.AnnData(X=np.ones((5, 3), dtype=np.float32))
    write_embeddings(adata, _layers(), url="http://svc", model="m", pooling="official")
    path = tmp_path / "out.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.uns["scstrata"]["X_m_layer12"]["layer"] == 12
    assert back.uns["scstrata"]["X_m_layer12"]["model"] == "m"
    np.testing.assert_array_equal(back.obsm["X_m_layer0"], adata.obsm["X_m_layer0"])


def test_earlier_provenance_of_other_keys_is_kept():
    adata = ad.AnnData(X=np.ones((5, 3), dtype=np.float32))
    write_embeddings(adata, {0: _layers()[0]}, url="u", model="a", pooling="official")
    write_embeddings(adata, {0: _layers()[0]}, url="u", model="b", pooling="official")
    assert set(adata.uns["scstrata"]) == {"X_a_layer0", "X_b_layer0"}


def test_row_count_differing_from_n_obs_writes_nothing():
    adata = ad.AnnData(X=np.ones((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="write_to: has 4 cells"):
        write_embeddings(adata, _layers(n_cells=5), url="u", model="m", pooling="official")
    assert len(adata.obsm) == 0
    assert "scstrata" not in adata.uns
