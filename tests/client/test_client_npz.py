"""The binary npz transport (docs/api.md): parsing, choosing it, and falling back to JSON."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from client_fakes import FakeService, npz_bytes, plan_job

from scstrata_client import ProtocolError
from scstrata_client._core import NPZ_AUTO_THRESHOLD
from scstrata_client._protocol import RawNpz, build_item, decode_reply, parse_embed_reply


def _arrays(n=3, dim=4, layers=(0, 2)):
    out = {f"layer_{k}": np.full((n, dim), k, dtype=np.float32) for k in layers}
    out["unmapped_genes"] = np.array(["FOO", "BAR"])
    out["n_unmapped_genes"] = np.array(2, dtype=np.int64)
    return out


def test_raw_npz_reply_is_parsed_into_float32_layers():
    chunk = parse_embed_reply(RawNpz(npz_bytes(_arrays())), 3, model="m", pooling="mean")
    assert list(chunk.layers) == [0, 2]
    assert chunk.layers[2].dtype == np.float32 and chunk.layers[2].shape == (3, 4)
    assert (chunk.model, chunk.pooling, chunk.dim) == ("m", "mean", 4)
    assert chunk.n_unmapped_genes == 2 and chunk.unmapped_genes == ["FOO", "BAR"]


def test_extra_output_members_are_parsed_when_asked_for_and_refused_otherwise():
    extra = np.arange(21, dtype=np.float32).reshape(3, 7)
    arrays = _arrays() | {"extra0_layer_5": extra}
    chunk = parse_embed_reply(RawNpz(npz_bytes(arrays)), 3, n_extra=1)
    assert list(chunk.layers) == [0, 2] and chunk.dim == 4
    (only,) = chunk.extras
    assert list(only) == [5]
    np.testing.assert_array_equal(only[5], extra)
    with pytest.raises(ProtocolError, match="asked for 0 extra outputs, the npz reply holds 1"):
        parse_embed_reply(RawNpz(npz_bytes(arrays)), 3)


def test_base64_npz_inside_a_json_result_is_parsed():
    result = {
        "model": "m",
        "pooling": "official",
        "n_cells": 3,
        "dim": 4,
        "npz": base64.b64encode(npz_bytes(_arrays())).decode(),
        "n_unmapped_genes": 2,
    }
    chunk = parse_embed_reply([result], 3)
    np.testing.assert_array_equal(chunk.layers[2], np.full((3, 4), 2.0))


def test_npz_with_a_missing_cell_raises():
    with pytest.raises(ProtocolError, match="sent 4 cells"):
        parse_embed_reply(RawNpz(npz_bytes(_arrays(n=3))), 4)


def test_npz_holding_pickled_objects_is_refused():
    evil = {"layer_0": np.array([{"a": 1}], dtype=object)}
    buffer = io.BytesIO()
    np.savez(buffer, **evil)
    with pytest.raises(ProtocolError, match="unreadable member"):
        parse_embed_reply(RawNpz(buffer.getvalue()), 1)


@pytest.mark.parametrize("raw", [b"", b"not a zip file", npz_bytes({"other": np.zeros(2)})])
def test_broken_npz_raises_protocol_error(raw):
    with pytest.raises(ProtocolError):
        parse_embed_reply(RawNpz(raw), 1)


def test_decode_reply_returns_the_raw_body_for_the_npz_content_type():
    request = httpx.Request("POST", "http://svc/embed")
    response = httpx.Response(
        200,
        content=b"PK..",
        headers={"content-type": "application/x-npz"},
        request=request,
    )
    assert decode_reply(response) == RawNpz(b"PK..")


def test_build_item_adds_format_only_for_npz(counts, gene_names):
    import scipy.sparse as sp

    cells = sp.csr_matrix(counts)
    args = dict(model="m", layers="all", pooling="official", options=None)
    assert "format" not in build_item(cells, gene_names, **args)
    assert build_item(cells, gene_names, format="npz", **args)["format"] == "npz"


def test_auto_format_asks_for_npz_only_above_the_threshold(counts, gene_names):
    # 7 cells x 13 layers x dim floats per chunk.
    big_dim = NPZ_AUTO_THRESHOLD // (7 * 13) + 1
    for dim, expected in [(big_dim, "npz"), (big_dim - 1, "json")]:
        job = plan_job(counts, gene_names, chunk_size=7, dim=dim)
        (task,) = job.tasks("auto")
        assert task.format == expected
        accept = job.headers(task).get("Accept")
        assert accept == ("application/x-npz" if expected == "npz" else None)
        assert job.body(task)["items"][0].get("format", "json") == expected
    (task,) = job.tasks("npz")
    assert task.format == "npz"
    (task,) = job.tasks("auto", npz_ok=False)
    assert task.format == "json"


def test_client_gets_the_same_numbers_over_npz_and_json(counts, gene_names):
    fake = FakeService(dims={"official": 5})
    results = {}
    for fmt in ("json", "npz"):
        client, _ = fake.client(transport_format=fmt, chunk_size=3)
        with client:
            results[fmt] = client.embed(counts, gene_names, model="scfoundation", layers=[1, -1])
    bodies = fake.embed_bodies
    assert [b["items"][0].get("format") for b in bodies] == [None] * 3 + ["npz"] * 3
    npz_calls = [r for r in fake.calls if r.url.path == "/embed"][3:]
    assert all(r.headers["accept"] == "application/x-npz" for r in npz_calls)
    assert sorted(results["npz"]) == [1, 12]
    for k in (1, 12):
        np.testing.assert_array_equal(results["npz"][k], results["json"][k])
    np.testing.assert_allclose(results["npz"][12][:, 0], counts.sum(axis=1))


def test_auto_uses_json_for_a_service_without_npz(counts, gene_names, caplog):
    fake = FakeService(dims={"official": 100_000}, supports_npz=False)
    client, sleeps = fake.client(chunk_size=4, max_concurrency=1)
    with client, caplog.at_level("INFO", logger="scstrata_client"):
        result = client.embed(counts, gene_names, model="scfoundation", layers=0)
        result2 = client.embed(counts[:2], gene_names, model="scfoundation", layers=0)
    formats = [b["items"][0].get("format") for b in fake.embed_bodies]
    # GET /info (read once) lists no npz: JSON from the first request, also in later calls.
    assert formats == [None, None, None]
    assert fake.info_calls == 1
    assert sleeps == []
    assert result[0].shape == (7, 100_000) and result2[0].shape == (2, 100_000)
    assert sum("offers JSON only" in r.message for r in caplog.records) == 1


def test_explicit_npz_against_a_service_without_it_raises_before_sending(counts, gene_names):
    fake = FakeService(supports_npz=False)
    client, _ = fake.client(transport_format="npz")
    with client, pytest.raises(ValueError, match=r"transport_format: .* does not offer the npz"):
        client.embed(counts, gene_names, model="scfoundation", layers=0)
    assert fake.embed_bodies == []


@pytest.mark.parametrize("cells_npz", [True, False])
def test_request_content_is_the_json_of_the_body(cells_npz):
    import json

    import scipy.sparse as sp

    from scstrata_client._protocol import request_body, request_content

    cells = sp.csr_matrix(np.array([[0, 2, 1], [3, 0, 0]], dtype=np.float32))
    item = build_item(
        cells,
        ["A", 'quote"d', "ü"],
        model="m",
        layers=[0, 2],
        pooling="mean",
        options={"tgthighres": "t4", "nested": {"cells_npz": ""}},
        format="npz",
        cells_npz=cells_npz,
    )
    body = request_body(item)
    assert json.loads(request_content(body)) == body
