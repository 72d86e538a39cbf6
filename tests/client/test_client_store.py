"""The zarr store of streamed runs (scstrata_client.store), without a service."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from scstrata_client.store import (
    InputSpec,
    StoreMismatch,
    StoreSpec,
    open_store,
    read_store,
)


def _spec(**changes) -> StoreSpec:
    fields = dict(
        model="tahoe-x1/70m",
        pooling="S",
        layers=[0, 2],
        dim=4,
        chunk_size=3,
        card_digest="card-1",
        checkpoint_digest="sha256:ab",
        options={"seed": 1},
        input=InputSpec(n_cells=7, n_genes=5, data_digest="data-1"),
    )
    fields.update(changes)
    return StoreSpec(**fields)


def _digest(i: int) -> str:
    return hashlib.sha256(f"chunk {i}".encode()).hexdigest()


def _layers(spec: StoreSpec, i: int) -> dict[int, np.ndarray]:
    start, stop = spec.rows(i)
    rows = np.arange(start, stop, dtype=np.float32)[:, None]
    return {k: np.repeat(rows * 10 + k, spec.dim, axis=1) for k in spec.layers}


def test_chunks_written_in_any_order_read_back_in_row_order(tmp_path):
    spec = _spec()
    store = open_store(tmp_path / "s.zarr", spec)
    assert spec.n_chunks == 3 and store.missing_chunks() == [0, 1, 2]
    for i in (2, 0, 1):
        store.write_chunk(i, _layers(spec, i), _digest(i))
    handle = read_store(tmp_path / "s.zarr")
    assert handle.complete and handle.done_chunks() == {0, 1, 2}
    assert handle.arrays == {0: "tahoe-x1_70m/S/layer_0", 2: "tahoe-x1_70m/S/layer_2"}
    for k in (0, 2):
        expected = np.repeat(np.arange(7, dtype=np.float32)[:, None] * 10 + k, 4, axis=1)
        np.testing.assert_array_equal(handle.to_numpy(k), expected)
        np.testing.assert_array_equal(handle.to_dask(k).compute(), expected)
    assert handle.chunk_digest(1) == _digest(1)


def test_a_partial_store_says_what_is_missing_and_refuses_to_load(tmp_path):
    spec = _spec()
    store = open_store(tmp_path / "s.zarr", spec)
    store.write_chunk(1, _layers(spec, 1), _digest(1))
    again = open_store(tmp_path / "s.zarr", spec)  # a resumed run sees what is done
    assert again.done_chunks() == {1} and again.missing_chunks() == [0, 2]
    assert np.isnan(again.layer(0)[0:3]).all()  # unwritten rows are NaN, not zeros
    with pytest.raises(RuntimeError, match="2 of 3 chunks are not written"):
        again.to_numpy(0)


def test_a_chunk_is_written_once(tmp_path):
    spec = _spec()
    store = open_store(tmp_path / "s.zarr", spec)
    store.write_chunk(0, _layers(spec, 0), _digest(0))
    with pytest.raises(StoreMismatch, match="chunk 0 is already written"):
        store.write_chunk(0, _layers(spec, 0), _digest(0))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"card_digest": "card-2"}, "card_digest"),
        ({"options": {"seed": 2}}, "options"),
        ({"layers": [0, 1]}, "layers"),
        ({"chunk_size": 4}, "chunk_size"),
        ({"input": InputSpec(n_cells=7, n_genes=5, data_digest="other")}, "data_digest"),
    ],
)
def test_a_store_of_another_job_is_refused(tmp_path, change, named):
    spec = _spec()
    open_store(tmp_path / "s.zarr", spec).write_chunk(0, _layers(spec, 0), _digest(0))
    with pytest.raises(StoreMismatch, match=f"refusing to mix.*{named}"):
        open_store(tmp_path / "s.zarr", _spec(**change))
    assert read_store(tmp_path / "s.zarr").done_chunks() == {0}  # left as it was


def test_another_pooling_of_the_same_cells_shares_the_store(tmp_path):
    open_store(tmp_path / "s.zarr", _spec())
    other = open_store(tmp_path / "s.zarr", _spec(pooling="mean", dim=6))
    assert other.arrays[0] == "tahoe-x1_70m/mean/layer_0"
    with pytest.raises(ValueError, match="2 jobs"):
        read_store(tmp_path / "s.zarr")
    assert read_store(tmp_path / "s.zarr", pooling="mean").spec.dim == 6


def test_verify_chunk_catches_other_values_of_the_same_shape(tmp_path):
    spec = _spec()
    store = open_store(tmp_path / "s.zarr", spec)
    store.write_chunk(0, _layers(spec, 0), _digest(0))
    store.verify_chunk(0, _digest(0))
    store.verify_chunk(1, _digest(5))  # not done: nothing to compare
    with pytest.raises(StoreMismatch, match="rows 0:3 were embedded from other cells"):
        store.verify_chunk(0, _digest(9))


def test_wrong_layers_or_shapes_are_refused_before_anything_is_written(tmp_path):
    spec = _spec()
    store = open_store(tmp_path / "s.zarr", spec)
    with pytest.raises(ValueError, match="got layers \\[0\\]"):
        store.write_chunk(0, {0: _layers(spec, 0)[0]}, _digest(0))
    bad = _layers(spec, 2)
    bad[2] = bad[2][:, :2]
    with pytest.raises(ValueError, match="expected shape \\(1, 4\\), got \\(1, 2\\)"):
        store.write_chunk(2, bad, _digest(2))
    assert store.done_chunks() == set()


def test_a_folder_that_is_not_a_store_is_not_overwritten(tmp_path):
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "s.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(StoreMismatch, match="not a zarr store"):
        open_store(tmp_path / "s.zarr", _spec())
