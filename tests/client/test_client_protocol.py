import httpx
import numpy as np
import pytest
import scipy.sparse as sp

from scstrata_client import InvalidRequest, ProtocolError, ServiceError, ServiceUnavailable
from scstrata_client._protocol import (
    build_item,
    decode_reply,
    error_message,
    normalise_layers,
    parse_embed_reply,
    request_body,
)


def test_request_item_has_the_api_md_shape_and_the_chunk_csr_arrays():
    cells = sp.csr_matrix(np.array([[1.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 3.0]]))
    item = build_item(
        cells,
        ["G0", "G1", "G2", "G3", "G4", "G5"],
        model="scfoundation",
        layers="all",
        pooling="official",
        options={"pre_normalized": False, "tgthighres": "t4"},
    )
    assert item == {
        "model": "scfoundation",
        "layers": "all",
        "pooling": "official",
        "options": {"pre_normalized": False, "tgthighres": "t4"},
        "genes": ["G0", "G1", "G2", "G3", "G4", "G5"],
        "cells": {"data": [1.0, 3.0], "indices": [0, 5], "indptr": [0, 1, 2], "shape": [2, 6]},
    }
    assert request_body(item) == {"items": [item]}


def test_request_item_values_are_plain_json_types(counts, gene_names):
    item = build_item(
        sp.csr_matrix(counts, dtype=np.float32),
        gene_names,
        model="m",
        layers=[np.int64(-1), 3],
        pooling="mean",
        options=None,
    )
    cells = item["cells"]
    assert all(type(v) is float for v in cells["data"])
    assert all(type(v) is int for v in cells["indices"] + cells["indptr"] + cells["shape"])
    assert item["options"] == {}
    assert item["pooling"] == "mean"


def test_request_item_drops_stored_zeros_and_sums_duplicates_without_touching_input():
    # Row 0 stores column 1 twice (1 + 2); row 1 stores an explicit zero.
    cells = sp.csr_matrix(([1.0, 2.0, 0.0], [1, 1, 0], [0, 2, 3]), shape=(2, 3))
    assert cells.nnz == 3
    item = build_item(cells, ["a", "b", "c"], model="m", layers=0, pooling="p", options={})
    assert item["cells"] == {"data": [3.0], "indices": [1], "indptr": [0, 1, 1], "shape": [2, 3]}
    assert cells.nnz == 3


@pytest.mark.parametrize(
    ("layers", "wire"),
    [("all", "all"), (3, 3), (-1, -1), (np.int32(2), 2), ([0, -1], [0, -1]), ((4,), [4])],
)
def test_layers_are_normalised_to_their_json_form(layers, wire):
    assert normalise_layers(layers) == wire


@pytest.mark.parametrize("layers", ["last", [], [1.5], True, 2.0, [True]])
def test_bad_layers_are_rejected_naming_the_argument(layers):
    with pytest.raises((ValueError, TypeError), match=r"^layers:"):
        normalise_layers(layers)


def _result(n_cells=2, dim=3, layers=None):
    layers = layers or {"0": [[0.1, 0.2, 0.3]] * n_cells, "12": [[1.0, 2.0, 3.0]] * n_cells}
    return {
        "model": "scfoundation",
        "pooling": "official",
        "n_cells": n_cells,
        "dim": dim,
        "layers": layers,
        "n_unmapped_genes": 3,
        "unmapped_genes": ["FOO", "BAR", "BAZ"],
    }


def test_reply_layers_get_int_keys_and_float32_arrays():
    parsed = parse_embed_reply([_result()], n_rows=2)
    assert list(parsed.layers) == [0, 12]
    assert all(a.dtype == np.float32 and a.shape == (2, 3) for a in parsed.layers.values())
    np.testing.assert_allclose(parsed.layers[12][1], [1.0, 2.0, 3.0])
    assert parsed.n_unmapped_genes == 3
    assert parsed.unmapped_genes == ["FOO", "BAR", "BAZ"]


def test_reply_with_fewer_rows_than_sent_cells_raises():
    with pytest.raises(ProtocolError, match="sent 3 cells but the reply says n_cells=2"):
        parse_embed_reply([_result(n_cells=2)], n_rows=3)


def test_reply_whose_rows_disagree_with_n_cells_raises():
    short = _result(n_cells=2, layers={"0": [[0.0, 0.0, 0.0]]})
    with pytest.raises(ProtocolError, match=r"layer 0: sent 2 cells"):
        parse_embed_reply([short], n_rows=2)


def test_reply_whose_rows_disagree_with_dim_raises():
    with pytest.raises(ProtocolError, match="dim=4"):
        parse_embed_reply([_result(dim=4)], n_rows=2)


@pytest.mark.parametrize("payload", [[], [_result(), _result()], {"layers": {}}])
def test_reply_must_hold_exactly_one_result(payload):
    with pytest.raises(ProtocolError, match="one result"):
        parse_embed_reply(payload, n_rows=2)


def test_reply_with_non_integer_layer_key_raises():
    with pytest.raises(ProtocolError, match="'last'"):
        parse_embed_reply([_result(layers={"last": [[0.0, 0.0, 0.0]] * 2})], n_rows=2)


def test_reply_missing_a_required_field_raises_protocol_error():
    broken = _result()
    del broken["dim"]
    with pytest.raises(ProtocolError, match="dim"):
        parse_embed_reply([broken], n_rows=2)


def test_error_message_joins_pydantic_detail_msgs_with_their_location():
    body = {
        "error": "invalid request",
        "detail": [
            {"loc": ["body", "items", 0, "cells", "shape"], "msg": "Field required"},
            {
                "loc": ["items", 0, "layers"],
                "msg": "Value error, layers: layer 40 is out of range 0..12 (or -13..-1)",
            },
        ],
    }
    assert error_message(body) == (
        "invalid request: items[0].cells.shape: Field required; "
        "layers: layer 40 is out of range 0..12 (or -13..-1)"
    )


def test_error_message_of_detail_msgs_alone():
    body = {"detail": [{"msg": "pooling: 'cls' is not one of official, S, T"}]}
    assert error_message(body) == "pooling: 'cls' is not one of official, S, T"


def test_error_message_of_error_string_alone():
    assert error_message({"error": "413: at most 4096 cells per request"}) == (
        "413: at most 4096 cells per request"
    )


def test_error_message_falls_back_to_raw_text():
    assert error_message("<html>Bad Gateway</html>", "<html>Bad Gateway</html>\n") == (
        "<html>Bad Gateway</html>"
    )
    assert error_message({"unexpected": 1}, '{"unexpected": 1}') == '{"unexpected": 1}'


def test_error_message_truncates_a_huge_raw_text():
    assert len(error_message(None, "x" * 10_000)) < 1100


def _response(status, *, json=None, text=None, headers=None):
    request = httpx.Request("POST", "http://svc:3000/embed")
    if json is not None:
        return httpx.Response(status, json=json, headers=headers, request=request)
    return httpx.Response(status, text=text or "", headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, InvalidRequest), (413, InvalidRequest), (422, InvalidRequest),
     (429, ServiceUnavailable), (503, ServiceUnavailable), (500, ServiceError)],
)  # fmt: skip
def test_non_2xx_reply_raises_the_matching_error_with_the_server_message(status, cls):
    body = {"error": "layers: layer 40 is out of range"}
    with pytest.raises(cls) as info:
        decode_reply(_response(status, json=body))
    err = info.value
    assert type(err) is cls
    assert err.status_code == status
    assert err.message == "layers: layer 40 is out of range"
    assert err.body == body
    assert (err.method, err.url) == ("POST", "http://svc:3000/embed")
    assert "layers: layer 40" in str(err) and str(status) in str(err)


def test_non_json_error_keeps_the_raw_text_as_body_and_message():
    with pytest.raises(ServiceError) as info:
        decode_reply(_response(502, text="upstream connect error"))
    assert info.value.body == "upstream connect error"
    assert info.value.message == "upstream connect error"


def test_error_without_a_body_uses_the_reason_phrase():
    with pytest.raises(InvalidRequest, match="Not Found"):
        decode_reply(_response(404))


def test_successful_reply_that_is_not_json_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="expected a JSON reply"):
        decode_reply(_response(200, text="<html>proxy login</html>"))


def test_error_message_of_a_list_of_error_objects():
    body = [{"error": "cells: 6 cells exceed this server's limit of 5 per request"}]
    assert error_message(body) == "cells: 6 cells exceed this server's limit of 5 per request"
    assert error_message([{"nothing": 1}], text="[raw]") == "[raw]"
