"""Cells as a binary ``cells_npz`` upload (docs/api.md): same numbers as JSON ``cells``, a 400
naming ``cells_npz`` for every malformed upload, and the same limits (413)."""

from __future__ import annotations

import base64
import io
import math

import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from scstrata_service.launcher import running_service

from helpers import embed_item, make_cells


def post(url: str, item: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/embed", json={"items": [item]}, timeout=120, **kwargs)


def npz_b64(compressed: bool = False, **arrays) -> str:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return base64.b64encode(buffer.getvalue()).decode()


def csr_arrays(counts, data=np.float32, index=np.int32) -> dict[str, np.ndarray]:
    counts = sp.csr_matrix(counts)
    return {
        "data": counts.data.astype(data),
        "indices": counts.indices.astype(index),
        "indptr": counts.indptr.astype(index),
        "shape": np.array(counts.shape, dtype=np.int64),
    }


def npz_item(counts, genes, arrays: dict | None = None, **fields) -> dict:
    """The item of ``embed_item`` with its cells as ``cells_npz`` (``arrays`` overrides)."""
    item = embed_item(counts, genes, **fields)
    del item["cells"]
    item["cells_npz"] = npz_b64(**(csr_arrays(counts) if arrays is None else arrays))
    return item


@pytest.mark.parametrize(
    "data, index", [(np.float32, np.int32), (np.float64, np.int64), (np.float32, np.int64)]
)
def test_cells_npz_gives_the_same_embeddings_as_json_cells(service_url, vocabulary, data, index):
    counts, genes = make_cells(vocabulary, n_cells=7, seed=71)
    as_json = post(service_url, embed_item(counts, genes, layers="all"))
    as_npz = post(
        service_url, npz_item(counts, genes, csr_arrays(counts, data, index), layers="all")
    )
    assert as_json.status_code == 200, as_json.text
    assert as_npz.status_code == 200, as_npz.text
    (want,), (got,) = as_json.json(), as_npz.json()
    assert got["n_cells"] == 7 and got["n_unmapped_genes"] == want["n_unmapped_genes"] == 2
    assert sorted(got["layers"]) == sorted(want["layers"]) == ["0", "1", "2", "3"]
    for k, rows in want["layers"].items():
        np.testing.assert_allclose(np.array(got["layers"][k]), np.array(rows), rtol=0, atol=1e-6)


def test_cells_npz_with_an_npz_reply(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=4, seed=72)
    want = post(service_url, embed_item(counts, genes, layers=[1])).json()[0]
    raw = post(
        service_url,
        npz_item(counts, genes, layers=[1], format="npz"),
        headers={"accept": "application/x-npz"},
    )
    assert raw.headers["content-type"] == "application/x-npz", raw.text
    with np.load(io.BytesIO(raw.content), allow_pickle=False) as npz:
        np.testing.assert_allclose(npz["layer_1"], want["layers"]["1"], rtol=0, atol=1e-6)


def _bad_uploads(vocabulary) -> dict[str, tuple[dict, str]]:
    """Case -> (item, text the 400's message must contain besides 'cells_npz')."""
    counts, genes = make_cells(vocabulary, n_cells=3, seed=73)
    good = csr_arrays(counts)
    nnz = len(good["data"])

    def item(**changes):
        arrays = {k: v for k, v in {**good, **changes}.items() if v is not None}
        return npz_item(counts, genes, arrays)

    def raw(value):
        return {**npz_item(counts, genes), "cells_npz": value}

    single = io.BytesIO()
    np.save(single, good["data"])
    return {
        "bad base64": (raw("%%% not base64 %%%"), "base64"),
        "not an npz": (raw(base64.b64encode(b"PK\x03\x04 not a zip").decode()), "np.savez"),
        "a single .npy": (raw(base64.b64encode(single.getvalue()).decode()), "np.savez"),
        "not a string": (raw([1, 2, 3]), "string"),
        "missing member": (item(indptr=None), "indptr"),
        "strings as data": (item(data=np.array(["1"] * nnz)), "data"),
        "objects as data": (item(data=np.array([{"a": 1}] * nnz, dtype=object)), "data"),
        "integer data": (item(data=good["data"].astype(np.int64)), "float32"),
        "float indices": (item(indices=good["indices"].astype(np.float64)), "int32"),
        "unsigned indptr": (item(indptr=good["indptr"].astype(np.uint64)), "indptr"),
        "float shape": (item(shape=np.array([3.0, len(genes)])), "shape"),
        "shape of 3": (item(shape=np.array([3, len(genes), 1])), "shape"),
        "2-D data": (item(data=good["data"].reshape(1, -1)), "1-D"),
        "indptr length": (item(indptr=good["indptr"][:-1]), "indptr"),
        "indptr end": (item(indptr=np.r_[good["indptr"][:-1], nnz + 1]), "indptr"),
        "indices out of range": (item(indices=np.full(nnz, len(genes) + 5, np.int32)), "indices"),
        "indices/data mismatch": (item(indices=good["indices"][:-1]), "indices"),
        "negative counts": (item(data=np.full(nnz, -1.0, np.float32)), "negative"),
        "NaN counts": (item(data=np.full(nnz, math.nan, np.float32)), "NaN"),
        "empty shape": (
            item(
                shape=np.array([0, len(genes)]),
                indptr=np.zeros(1, np.int32),
                data=np.zeros(0, np.float32),
                indices=np.zeros(0, np.int32),
            ),
            "empty",
        ),
        "both cells and cells_npz": (
            {**npz_item(counts, genes), **embed_item(counts, genes)},
            "not both",
        ),
        "h5ad and cells_npz": ({**npz_item(counts, genes), "h5ad": "AAAA"}, "h5ad"),
    }


CASES = [
    "bad base64",
    "not an npz",
    "a single .npy",
    "not a string",
    "missing member",
    "strings as data",
    "objects as data",
    "integer data",
    "float indices",
    "unsigned indptr",
    "float shape",
    "shape of 3",
    "2-D data",
    "indptr length",
    "indptr end",
    "indices out of range",
    "indices/data mismatch",
    "negative counts",
    "NaN counts",
    "empty shape",
    "both cells and cells_npz",
    "h5ad and cells_npz",
]


def test_the_catalogue_of_bad_uploads_is_complete(vocabulary):
    assert sorted(_bad_uploads(vocabulary)) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_a_bad_upload_gets_a_400_naming_cells_npz(service_url, vocabulary, case):
    item, words = _bad_uploads(vocabulary)[case]
    reply = post(service_url, item)
    assert reply.status_code == 400, reply.text
    messages = " ".join(d["msg"] for d in reply.json()["detail"])
    assert "cells_npz" in str(reply.json()["detail"]) and words in messages, messages


def test_cells_npz_without_genes_is_a_400_naming_genes(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=2, seed=74)
    item = npz_item(counts, genes)
    del item["genes"]
    reply = post(service_url, item)
    assert reply.status_code == 400 and "genes: required" in reply.text, reply.text


@pytest.fixture(scope="module")
def limited_url(tiny_checkpoint):
    """A server with small cell, gene and body limits."""
    env = {"SCSTRATA_MAX_CELLS": "5", "SCSTRATA_MAX_GENES": "1000", "SCSTRATA_MAX_BODY_MB": "1"}
    with running_service([f"scf=scfoundation:{tiny_checkpoint.parent}"], env=env) as url:
        yield url


def test_limits_answer_413_for_cells_npz(limited_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=6, seed=75)
    assert post(limited_url, npz_item(counts[:5], genes)).status_code == 200

    too_many = post(limited_url, npz_item(counts, genes))
    assert too_many.status_code == 413, too_many.text
    assert "6 cells exceed" in too_many.text and "chunk_size" in too_many.text

    # The limit is checked on cells_npz's shape before its arrays are read.
    wide = {**csr_arrays(counts[:1]), "shape": np.array([1, 1001]), "data": np.array(["x"])}
    too_wide = post(limited_url, npz_item(counts[:1], genes, wide))
    assert too_wide.status_code == 413, too_wide.text
    assert "1001 genes exceed" in too_wide.text

    # A small compressed upload that unpacks past the body limit (1 MiB).
    n = 300_000  # 2.4 MB of float64 zeros, a few kB compressed
    bomb = {**npz_item(counts[:1], genes)}
    bomb["cells_npz"] = npz_b64(
        compressed=True,
        data=np.zeros(n),
        indices=np.zeros(n, np.int32),
        indptr=np.array([0, n]),
        shape=np.array([1, len(genes)]),
    )
    assert len(bomb["cells_npz"]) < 100_000
    unpacked = post(limited_url, bomb)
    assert unpacked.status_code == 413, unpacked.text
    assert "cells_npz" in unpacked.text and "SCSTRATA_MAX_BODY_MB" in unpacked.text
