"""Security and overload against the real server: no request may read server files, crash the
worker, fail its neighbours or get past a limit; each case checks the worker PIDs unchanged."""

from __future__ import annotations

import base64
import json
import threading
import time

import anndata as ad
import h5py
import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from helpers import embed_item, make_cells, server_pids


def post(url: str, item: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/embed", json={"items": [item]}, timeout=120, **kwargs)


def post_raw(url: str, body: bytes, **headers) -> httpx.Response:
    headers = {"content-type": "application/json", **headers}
    return httpx.post(f"{url}/embed", content=body, headers=headers, timeout=120)


@pytest.fixture
def same_worker(service_url):
    """The server's processes are the same after the test: no worker crashed."""
    before = server_pids(service_url)
    yield
    assert httpx.get(f"{service_url}/livez", timeout=10).status_code == 200
    assert server_pids(service_url) == before


# --- .h5ad uploads: data, never file references -------------------------------------------


def h5ad_upload(tmp_path, counts, genes, edit=None) -> str:
    """A sparse .h5ad of ``counts``, changed with h5py by ``edit(file)``, as base64."""
    adata = ad.AnnData(sp.csr_matrix(counts, dtype=np.float32))
    adata.var_names = genes
    path = tmp_path / "upload.h5ad"
    adata.write_h5ad(path)
    if edit is not None:
        with h5py.File(path, "a") as f:
            edit(f)
    return base64.b64encode(path.read_bytes()).decode()


SECRET = b"TOPSECRET-server-line\n"


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "server-secret.txt"
    path.write_bytes(SECRET * 2000)
    return path


def _external_index(secret):
    def edit(f):
        n = f["var/_index"].shape[0]
        attrs = dict(f["var/_index"].attrs)
        del f["var/_index"]
        ds = f.create_dataset("var/_index", (n,), "S16", external=[(str(secret), 0, 16 * n)])
        ds.attrs.update(attrs)

    return edit


def _external_data(secret):
    def edit(f):
        n = f["X/data"].shape[0]
        del f["X/data"]
        f.create_dataset("X/data", (n,), "f4", external=[(str(secret), 0, 4 * n)])

    return edit


def _external_link(other):
    def edit(f):
        del f["X"]
        f["X"] = h5py.ExternalLink(str(other), "/X")

    return edit


def _virtual_data(other):
    def edit(f):
        n = f["X/data"].shape[0]
        del f["X/data"]
        layout = h5py.VirtualLayout(shape=(n,), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "X/data", shape=(n,))
        f.create_virtual_dataset("X/data", layout)

    return edit


def _soft_link(f):
    f["var_again"] = h5py.SoftLink("/var")


@pytest.mark.parametrize("case", ["external var index", "external X", "external link", "virtual"])
def test_an_h5ad_that_refers_to_server_files_is_refused_before_reading(
    service_url, vocabulary, tmp_path, secret_file, same_worker, case
):
    counts, genes = make_cells(vocabulary, n_cells=3, seed=81)
    other = tmp_path / "other.h5ad"
    adata = ad.AnnData(sp.csr_matrix(counts, dtype=np.float32))
    adata.var_names = genes
    adata.write_h5ad(other)
    edit = {
        "external var index": _external_index(secret_file),
        "external X": _external_data(secret_file),
        "external link": _external_link(other),
        "virtual": _virtual_data(other),
    }[case]
    reply = post(service_url, {"model": "scf", "h5ad": h5ad_upload(tmp_path, counts, genes, edit)})
    assert reply.status_code == 400, reply.text
    assert "h5ad" in reply.text and "TOPSECRET" not in reply.text
    assert any(word in reply.text for word in ("external", "virtual")), reply.text


def test_an_h5ad_soft_link_is_refused(service_url, vocabulary, tmp_path, same_worker):
    counts, genes = make_cells(vocabulary, n_cells=2, seed=82)
    reply = post(
        service_url, {"model": "scf", "h5ad": h5ad_upload(tmp_path, counts, genes, _soft_link)}
    )
    assert reply.status_code == 400 and "soft link" in reply.text, reply.text


@pytest.mark.parametrize("value", ["2e9", "-5", "past the last column"])
def test_h5ad_indices_out_of_range_are_a_400_not_a_crash(
    service_url, vocabulary, tmp_path, same_worker, value
):
    counts, genes = make_cells(vocabulary, n_cells=3, seed=83)
    bad = {"2e9": 2_000_000_000, "-5": -5, "past the last column": len(genes)}[value]

    def edit(f):
        indices = f["X/indices"][()]
        indices[-1] = bad
        f["X/indices"][...] = indices

    reply = post(service_url, {"model": "scf", "h5ad": h5ad_upload(tmp_path, counts, genes, edit)})
    assert reply.status_code == 400, reply.text
    assert "h5ad.X.indices" in reply.text and "must lie in" in reply.text


def test_a_non_monotonic_h5ad_indptr_is_named(service_url, vocabulary, tmp_path, same_worker):
    counts, genes = make_cells(vocabulary, n_cells=4, seed=84)

    def edit(f):
        indptr = f["X/indptr"][()]
        indptr[1], indptr[2] = indptr[2], indptr[1]
        f["X/indptr"][...] = indptr

    reply = post(service_url, {"model": "scf", "h5ad": h5ad_upload(tmp_path, counts, genes, edit)})
    assert (
        reply.status_code == 400
        and "h5ad.X.indptr" in reply.text
        and "never decrease" in reply.text
    )


def test_a_csc_h5ad_equals_the_csr_request(service_url, vocabulary, tmp_path):
    counts, genes = make_cells(vocabulary, n_cells=4, seed=85)
    adata = ad.AnnData(sp.csc_matrix(counts, dtype=np.float32))
    adata.var_names = genes
    path = tmp_path / "csc.h5ad"
    adata.write_h5ad(path)
    item = {"model": "scf", "layers": [1], "h5ad": base64.b64encode(path.read_bytes()).decode()}
    got, want = post(service_url, item), post(service_url, embed_item(counts, genes, layers=[1]))
    assert got.status_code == 200, got.text
    np.testing.assert_allclose(
        got.json()[0]["layers"]["1"], want.json()[0]["layers"]["1"], atol=1e-5
    )


# --- JSON values that overflowed or produced NaN ------------------------------------------


def _variants(vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=3, seed=86)
    good = embed_item(counts, genes)
    nnz = len(good["cells"]["data"])

    def cells(**changes):
        return {**good, "cells": {**good["cells"], **changes}}

    return good, {
        "indices 2**70": (cells(indices=[2**70] * nnz), "cells.indices"),
        "indptr 2**63": (cells(indptr=[0] + [2**63] * 3), "cells.indptr"),
        "counts 1e308": (cells(data=[1e308] * nnz), "cells.data"),
        "pre_normalized 1e300": (
            {**cells(data=[1e300] * nnz), "options": {"pre_normalized": True}},
            "cells.data",
        ),
        "tgthighres 't' + 400 nines": (
            {**good, "options": {"tgthighres": "t" + "9" * 400}},
            "options.tgthighres",
        ),
        "layers true": ({**good, "layers": True}, "layers"),
        "layers '1'": ({**good, "layers": "1"}, "layers"),
        "layers 1.0": ({**good, "layers": 1.0}, "layers"),
        "data '3'": (cells(data=["3"] * nnz), "cells.data"),
        "data true": (cells(data=[True] * nnz), "cells.data"),
    }


VARIANTS = [
    "indices 2**70",
    "indptr 2**63",
    "counts 1e308",
    "pre_normalized 1e300",
    "tgthighres 't' + 400 nines",
    "layers true",
    "layers '1'",
    "layers 1.0",
    "data '3'",
    "data true",
]


def test_the_variants_are_all_listed(vocabulary):
    assert sorted(_variants(vocabulary)[1]) == sorted(VARIANTS)


@pytest.mark.parametrize("case", VARIANTS)
def test_values_that_overflowed_or_gave_nan_are_a_400_naming_the_field(
    service_url, vocabulary, same_worker, case
):
    item, field = _variants(vocabulary)[1][case]
    reply = post_raw(service_url, json.dumps({"items": [item]}).encode())
    assert reply.status_code == 400, reply.text
    assert field in reply.text, reply.text


def test_replies_are_valid_json_without_nan(service_url, vocabulary):
    good, _ = _variants(vocabulary)
    reply = post(service_url, good)
    assert reply.status_code == 200
    json.loads(reply.text, parse_constant=lambda c: pytest.fail(f"{c} in the reply"))


# --- smaller points of the HTTP edge ------------------------------------------------------


@pytest.mark.parametrize(
    "accept, npz",
    [
        ("application/x-npz", True),
        ("application/json, application/x-npz;q=0.5", True),
        ("application/x-npz;q=0", False),
        ("application/x-npzzz", False),
        ("application/json", False),
    ],
)
def test_an_npz_reply_only_when_accepted(service_url, vocabulary, accept, npz):
    counts, genes = make_cells(vocabulary, n_cells=2, seed=87)
    reply = post(
        service_url, embed_item(counts, genes, layers=[0], format="npz"), headers={"accept": accept}
    )
    assert reply.status_code == 200
    kind = reply.headers["content-type"]
    assert (kind == "application/x-npz") is npz, kind


def test_empty_items_padded_past_256_bytes_is_a_400(service_url):
    reply = post_raw(service_url, b'{"items": []' + b" " * 400 + b"}")
    assert reply.status_code == 400 and "items" in reply.text


def test_trace_on_embed_is_405(service_url):
    reply = httpx.request("TRACE", f"{service_url}/embed", timeout=10)
    assert reply.status_code == 405 and reply.headers["allow"] == "POST"


def test_livez_answers_within_a_second_while_a_large_body_is_checked(service_url, vocabulary):
    n = 2_000_000  # ~20 MB of JSON lists; an unknown model, refused once parsed
    cells = {"data": [1.0] * n, "indices": [0] * n, "indptr": [0, n], "shape": [1, 10]}
    body = json.dumps({"items": [{"model": "nope", "genes": ["a"] * 10, "cells": cells}]}).encode()
    latencies: list[float] = []
    done = threading.Event()

    def poll():
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                start = time.perf_counter()
                assert client.get(f"{service_url}/livez").status_code == 200
                latencies.append(time.perf_counter() - start)
                time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(0.2)
        start = time.perf_counter()
        reply = post_raw(service_url, body)
        seconds = time.perf_counter() - start
    finally:
        done.set()
        poller.join()
    assert reply.status_code == 400 and "nope" in reply.text
    print(
        f"\n{len(body) / 2**20:.0f} MiB body refused in {seconds:.2f} s; /livez worst "
        f"{max(latencies):.2f} s over {len(latencies)} polls"
    )
    assert len(latencies) >= 3 and max(latencies) < 1.0
