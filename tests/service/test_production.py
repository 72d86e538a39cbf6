"""Production transport and operations: npz replies, extra outputs, h5ad upload, limits,
auth and metrics — against the real server."""

from __future__ import annotations

import base64
import io

import anndata as ad
import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from scstrata_service.launcher import running_service

from helpers import embed_item, make_cells, metric_total

TOL = dict(rtol=1e-5, atol=1e-5)


def post(url: str, item: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/embed", json={"items": [item]}, timeout=120, **kwargs)


def test_npz_result_in_json_and_as_a_raw_binary_reply(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=5, seed=31)
    as_json = post(service_url, embed_item(counts, genes, layers=[0, 3])).json()[0]
    wrapped = post(service_url, embed_item(counts, genes, layers=[0, 3], format="npz")).json()[0]
    assert wrapped["layers"] == {} and wrapped["n_unmapped_genes"] == 2
    raw = post(
        service_url,
        embed_item(counts, genes, layers=[0, 3], format="npz"),
        headers={"accept": "application/x-npz"},
    )
    assert raw.headers["content-type"] == "application/x-npz"
    assert (
        len(raw.content)
        < len(post(service_url, embed_item(counts, genes, layers=[0, 3])).content) / 3
    )  # binary is far smaller than JSON text
    for blob in (base64.b64decode(wrapped["npz"]), raw.content):
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            for k in (0, 3):
                assert npz[f"layer_{k}"].dtype == np.float32
                np.testing.assert_allclose(npz[f"layer_{k}"], as_json["layers"][str(k)], **TOL)
            assert int(npz["n_unmapped_genes"]) == 2
            assert set(npz["unmapped_genes"]) == {"NOT_A_GENE", "ALSO_NOT"}


def test_an_error_stays_json_when_npz_is_accepted(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=2, seed=32)
    reply = post(
        service_url,
        embed_item(counts, genes, layers=99, format="npz"),
        headers={"accept": "application/x-npz"},
    )
    assert reply.status_code == 400 and "out of range" in reply.json()["detail"][0]["msg"]


def test_extra_outputs_come_from_the_same_single_forward_pass(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=3, seed=33)
    separate = {
        p: post(service_url, embed_item(counts, genes, layers=ks, pooling=p)).json()[0]
        for p, ks in (("official", [3]), ("S", [1]), ("mean", "all"))
    }
    before = metric_total(service_url, "scstrata_forward_passes_total")
    item = embed_item(
        counts,
        genes,
        layers=[3],
        pooling="official",
        extra_outputs=[{"layers": [1], "pooling": "S"}, {"layers": "all", "pooling": "mean"}],
    )
    together = post(service_url, item).json()[0]
    after = metric_total(service_url, "scstrata_forward_passes_total")
    assert after - before == 1  # three cells, one pass, three outputs
    np.testing.assert_allclose(together["layers"]["3"], separate["official"]["layers"]["3"], **TOL)
    s_out, mean_out = together["extra_outputs"]
    assert (s_out["pooling"], s_out["dim"], mean_out["pooling"]) == ("S", 32, "mean")
    np.testing.assert_allclose(s_out["layers"]["1"], separate["S"]["layers"]["1"], **TOL)
    assert sorted(mean_out["layers"]) == ["0", "1", "2", "3"]
    np.testing.assert_allclose(mean_out["layers"]["2"], separate["mean"]["layers"]["2"], **TOL)


def _h5ad_b64(adata: ad.AnnData, tmp_path) -> str:
    path = tmp_path / "upload.h5ad"
    adata.write_h5ad(path)
    return base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize("dense", [True, False])
def test_h5ad_upload_equals_the_csr_request(service_url, vocabulary, tmp_path, dense):
    counts, genes = make_cells(vocabulary, n_cells=4, seed=34)
    expected = post(service_url, embed_item(counts, genes, layers=[2])).json()[0]
    ones = np.ones(counts.shape)  # X is not the counts: h5ad_layer must be honoured
    adata = ad.AnnData(ones if dense else sp.csr_matrix(ones))
    adata.var_names = [f"g{i}" for i in range(len(genes))]  # names only in a var column
    adata.var["symbol"] = genes
    adata.layers["counts"] = counts.toarray() if dense else counts.copy()
    item = {
        "model": "scf",
        "layers": [2],
        "h5ad": _h5ad_b64(adata, tmp_path),
        "h5ad_layer": "counts",
        "gene_column": "symbol",
    }
    got = post(service_url, item)
    assert got.status_code == 200, got.text
    np.testing.assert_allclose(got.json()[0]["layers"]["2"], expected["layers"]["2"], **TOL)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"h5ad": "%%%not base64"}, "h5ad"),
        ({"h5ad": base64.b64encode(b"not an h5ad file").decode()}, "h5ad"),
        ({"h5ad_layer": "missing"}, "h5ad_layer"),
        ({"gene_column": "missing"}, "gene_column"),
    ],
)
def test_bad_h5ad_uploads_get_a_400_naming_the_field(
    service_url, vocabulary, tmp_path, change, field
):
    counts, genes = make_cells(vocabulary, n_cells=2, seed=35)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.var_names = genes
    item = {"model": "scf", "h5ad": _h5ad_b64(adata, tmp_path), **change}
    reply = post(service_url, item)
    assert reply.status_code == 400 and field in reply.text, reply.text


@pytest.fixture(scope="module")
def guarded_url(tiny_checkpoint):
    """A server with small limits and bearer auth."""
    env = {
        "SCSTRATA_MAX_CELLS": "5",
        "SCSTRATA_MAX_BODY_MB": "1",
        "SCSTRATA_MAX_OUTPUTS": "2",
        "SCSTRATA_TOKEN": "s3cret",
    }
    with running_service([f"scf=scfoundation:{tiny_checkpoint.parent}"], env=env) as url:
        yield url


AUTH = {"authorization": "Bearer s3cret"}


def test_auth_guards_every_endpoint_but_health(guarded_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=2, seed=36)
    assert httpx.get(f"{guarded_url}/readyz").status_code == 200
    assert httpx.get(f"{guarded_url}/livez").status_code == 200
    for method, path in (("GET", "/models"), ("GET", "/metrics"), ("POST", "/embed")):
        reply = httpx.request(method, f"{guarded_url}{path}", json={"items": []})
        assert reply.status_code == 401, path
        assert "Bearer" in reply.json()["error"]
    wrong = post(guarded_url, embed_item(counts, genes), headers={"authorization": "Bearer no"})
    assert wrong.status_code == 401
    assert post(guarded_url, embed_item(counts, genes), headers=AUTH).status_code == 200
    assert httpx.get(f"{guarded_url}/models", headers=AUTH).status_code == 200


def test_limits_answer_413_or_422_naming_the_limit_and_the_way_around(guarded_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=6, seed=37)
    too_many = post(guarded_url, embed_item(counts, genes), headers=AUTH)
    assert too_many.status_code == 413
    assert "limit of 5" in too_many.text and "chunk_size" in too_many.text
    outputs = embed_item(counts[:2], genes, extra_outputs=[{"pooling": "S"}, {"pooling": "T"}])
    assert (reply := post(guarded_url, outputs, headers=AUTH)).status_code == 422
    assert "extra_outputs" in reply.text
    body = b'{"items": [' + b" " * (1024 * 1024 + 10) + b"]}"
    big = httpx.post(
        f"{guarded_url}/embed",
        content=body,
        timeout=30,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert big.status_code == 413 and "body" in big.json()["error"]


def test_metrics_count_cells_passes_and_latency_per_model(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=4, seed=38)
    cells_before = metric_total(service_url, "scstrata_cells_embedded_total")
    assert post(service_url, embed_item(counts, genes, layers=1)).status_code == 200
    text = httpx.get(f"{service_url}/metrics", timeout=10).text
    assert metric_total(service_url, "scstrata_cells_embedded_total") - cells_before == 4
    for name in (
        "scstrata_forward_passes_total",
        "scstrata_tokens_per_pass_bucket",
        "scstrata_padding_fraction_bucket",
        "scstrata_embed_seconds_bucket",
    ):
        assert f"{name}{{" in text and 'model="scf"' in text, name
