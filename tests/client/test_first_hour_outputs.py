"""Several poolings from one forward pass, and the service's gene checks, from the client
(issue 17, points 1 and 5)."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from client_fakes import FakeService

from scstrata_client import Client, InvalidRequest
from scstrata_client.store import read_store

from helpers import make_cells, metric_total

PASSES = "scstrata_forward_passes_total"


def test_two_poolings_from_one_call_equal_two_calls_from_one_pass(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=5, n_genes=200, seed=21)
    with Client(service_url, cache=False, progress=False) as client:
        before = metric_total(service_url, PASSES)
        both = client.embed(
            counts, genes, model="scf", layers=[0, -1], pooling="S",
            extra_outputs=["mean", {"pooling": "T", "layers": 2}],
        )  # fmt: skip
        one_pass = metric_total(service_url, PASSES) - before
        alone = {
            "S": client.embed(counts, genes, model="scf", layers=[0, -1], pooling="S"),
            "mean": client.embed(counts, genes, model="scf", layers=[0, -1], pooling="mean"),
            "T": client.embed(counts, genes, model="scf", layers=2, pooling="T"),
        }
        three_passes = metric_total(service_url, PASSES) - before - one_pass
    assert (one_pass, three_passes) == (1, 3)
    assert sorted(both) == ["S", "T", "mean"]
    for pooling, layers in alone.items():
        assert sorted(both[pooling]) == sorted(layers)
        for k, array in layers.items():
            np.testing.assert_allclose(both[pooling][k], array, rtol=0, atol=1e-6)
    assert not np.allclose(both["S"][3], both["mean"][3])  # really two poolings


def test_extra_outputs_go_to_obsm_and_to_the_store(service_url, vocabulary, tmp_path):
    counts, genes = make_cells(vocabulary, n_cells=6, n_genes=150, seed=22)
    data = ad.AnnData(counts.astype(np.float32))
    data.var_names = list(genes)
    with Client(service_url, cache=False, progress=False, chunk_size=4) as client:
        got = client.embed(data, model="scf", layers=-1, pooling="S", extra_outputs=["mean"],
                           write_to=data, key_added="emb")  # fmt: skip
        stores = client.embed(data, model="scf", layers=-1, pooling="S", extra_outputs=["mean"],
                              out=tmp_path / "layers.zarr")  # fmt: skip
    assert {"emb_layer3_S", "emb_layer3_mean"} <= set(data.obsm)
    np.testing.assert_array_equal(data.obsm["emb_layer3_mean"], got["mean"][3])
    assert sorted(stores) == ["S", "mean"]
    for pooling in ("S", "mean"):
        store = read_store(tmp_path / "layers.zarr", "scf", pooling)
        assert store.complete
        np.testing.assert_allclose(store.to_numpy(3), got[pooling][3], rtol=0, atol=1e-6)


def test_only_missing_outputs_are_asked_for(counts, gene_names, tmp_path):
    # The cache holds "official" after one call: a second call with an extra pooling asks
    # every chunk for that pooling alone, as the request's own output.
    fake = FakeService(dims={"official": 3, "S": 4})
    client, _ = fake.client(cache=True, cache_dir=tmp_path, chunk_size=4)
    with client:
        first = client.embed(counts, gene_names, model="scfoundation", layers=[0, 1])
        both = client.embed(counts, gene_names, model="scfoundation", layers=[0, 1],
                            extra_outputs=["S"])  # fmt: skip
    items = [b["items"][0] for b in fake.embed_bodies]
    assert [(i["pooling"], "extra_outputs" in i) for i in items] == [("official", False)] * 2 + [
        ("S", False)
    ] * 2
    np.testing.assert_array_equal(both["official"][1], first[1])
    assert (both["S"][1][:, 2] == 1).all()  # the fake's mark of pooling "S"
    np.testing.assert_allclose(both["S"][0][:, 0], counts.sum(axis=1))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("S", "extra_outputs: expected a list"),
        (["official"], r"extra_outputs\[0\]: pooling 'official' is asked for already"),
        ([{"pooling": "S", "layer": 1}], r"extra_outputs\[0\]: unknown keys \['layer'\]"),
    ],
)
def test_bad_extra_outputs_fail_before_any_request(counts, gene_names, extra, message):
    fake = FakeService()
    client, _ = fake.client()
    with client, pytest.raises((TypeError, ValueError), match=message):
        client.embed(counts, gene_names, model="scfoundation", extra_outputs=extra)
    assert fake.embed_bodies == []


def test_extra_outputs_need_a_service_that_offers_them(counts, gene_names):
    fake = FakeService(info=False)  # older than /info: no extra_outputs known
    client, _ = fake.client()
    with client, pytest.raises(ValueError, match=r"extra_outputs: .* call embed once per pooling"):
        client.embed(counts, gene_names, model="scfoundation", extra_outputs=["S"])
    assert fake.embed_bodies == []


# -- the service's gene checks, set from the client ---------------------------------------------


def test_a_gene_subset_is_refused_naming_the_fix(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=3, n_genes=300, seed=23)
    with Client(service_url, cache=False, progress=False) as client:
        with pytest.raises(InvalidRequest, match=r"highly variable genes .* adata\.raw") as err:
            client.embed(counts, genes, model="scf", layers=-1, min_known_genes=1000)
        assert "set min_known_genes lower" in str(err.value)
        with pytest.warns(UserWarning, match="2 of 302 genes"):  # lowered: taken, and warned
            client.embed(counts, genes, model="scf", layers=-1, min_known_genes=300)


def test_the_cli_refuses_a_gene_subset_in_one_line(service_url, vocabulary, tmp_path):
    counts, genes = make_cells(vocabulary, n_cells=3, n_genes=300, seed=24)
    data = ad.AnnData(counts.astype(np.float32))
    data.var_names = list(genes)
    data.write_h5ad(tmp_path / "hvg.h5ad")
    command = [sys.executable, "-m", "scstrata_client.cli", "embed", "--url", service_url,
               "--model", "scf", "--layers", "-1", "-q", "--no-cache", "--min-known-genes",
               "1000", str(tmp_path / "hvg.h5ad"), "-o", str(tmp_path / "out.h5ad")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("scstrata embed: ") and "highly variable genes" in line
    assert "min_known_genes" in line


def test_coverage_options_are_checked_locally(counts, gene_names):
    fake = FakeService()
    client, _ = fake.client()
    with client:
        with pytest.raises(ValueError, match="min_known_genes: expected a count"):
            client.embed(counts, gene_names, model="scfoundation", min_known_genes=-1)
        with pytest.raises(ValueError, match=r"min_mapped_fraction: expected a share in 0\.\.1"):
            client.embed(counts, gene_names, model="scfoundation", min_mapped_fraction=2)
        client.embed(counts, gene_names, model="scfoundation", layers=0, min_known_genes=7,
                     min_mapped_fraction=0.25)  # fmt: skip
    item = fake.embed_bodies[-1]["items"][0]
    assert (item["min_known_genes"], item["min_mapped_fraction"]) == (7, 0.25)
