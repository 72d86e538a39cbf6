"""Streaming to a zarr store (embed(out=...)): equal to the in-memory result, resumable,
never mixed, and flat in memory. Fakes on httpx.MockTransport; no server."""

from __future__ import annotations

import asyncio
import tracemalloc

import anndata as ad
import httpx
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from client_fakes import FakeService, item_matrix

from scstrata_client import TransportError
from scstrata_client.store import EmbeddingStore, StoreMismatch, read_store

GENES = ["A1BG", "TP53", "GAPDH", "ACTB", "MYC"]
MODEL = "scfoundation"


def _cells(n: int = 50, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.0, size=(n, len(GENES))).astype(np.float32)
    counts[:, 0] += 1 + np.arange(n)  # every row differs, so row order shows
    return sp.csr_matrix(counts)


def _input(kind: str, cells: sp.csr_matrix, tmp_path):
    """The same cells as each kind of input ``embed`` reads; returns (X, genes)."""
    if kind == "matrix":
        return cells, GENES
    adata = ad.AnnData(X=cells, var=pd.DataFrame(index=GENES))
    tmp_path.mkdir(parents=True, exist_ok=True)
    if kind == "zarr":
        adata.write_zarr(tmp_path / "cells.zarr")
        return str(tmp_path / "cells.zarr"), None
    adata.write_h5ad(tmp_path / "cells.h5ad")
    if kind == "h5ad":
        return tmp_path / "cells.h5ad", None
    return ad.read_h5ad(tmp_path / "cells.h5ad", backed="r"), None  # "backed"


@pytest.mark.parametrize("kind", ["matrix", "h5ad", "backed", "zarr"])
def test_the_store_equals_the_in_memory_result(tmp_path, kind):
    cells = _cells()
    fake = FakeService()
    client, _ = fake.client(chunk_size=7)
    X, genes = _input(kind, cells, tmp_path)
    with client:
        memory = client.embed(cells, GENES, model=MODEL, layers=[0, 5, -1])
        handle = client.embed(X, genes, model=MODEL, layers=[0, 5, -1], out=tmp_path / "l.zarr")
    assert isinstance(handle, EmbeddingStore)
    assert handle.complete and handle.layers == [0, 5, 12] and handle.n_cells == 50
    for k in (0, 5, 12):
        np.testing.assert_array_equal(handle.to_numpy(k), memory[k])
    spec = read_store(tmp_path / "l.zarr").spec  # the metadata the store carries
    assert (spec.checkpoint_digest, spec.options, spec.chunk_size) == ("sha256:00", {}, 7)
    assert len(fake.embed_bodies) == 2 * 8


@pytest.mark.parametrize("suffix", ["h5ad", "zarr"])
def test_a_counts_layer_and_gene_column_of_a_file_are_read_a_chunk_at_a_time(tmp_path, suffix):
    cells = _cells()
    adata = ad.AnnData(
        X=sp.csr_matrix(cells.shape, dtype=np.float32),  # X holds no counts: the layer does
        var=pd.DataFrame({"symbol": GENES}, index=[f"ENSG{i}" for i in range(len(GENES))]),
    )
    adata.layers["counts"] = cells
    path = tmp_path / f"cells.{suffix}"
    adata.write_zarr(path) if suffix == "zarr" else adata.write_h5ad(path)
    fake = FakeService()
    client, _ = fake.client(chunk_size=7)
    with client:
        memory = client.embed(cells, GENES, model=MODEL, layers=[0, -1])
        store = client.embed(
            path, model=MODEL, layers=[0, -1], out=tmp_path / "l.zarr",
            counts_layer="counts", gene_column="symbol",
        )  # fmt: skip
        with pytest.raises(ValueError, match=r"counts_layer: .* no layer 'raw' \(has: counts\)"):
            client.embed(path, model=MODEL, out=tmp_path / "x.zarr", counts_layer="raw")
        with pytest.raises(ValueError, match=r"gene_column: .* no var column 'name'"):
            client.embed(path, model=MODEL, out=tmp_path / "x.zarr", gene_column="name")
    assert store.complete
    for k in (0, 12):
        np.testing.assert_array_equal(store.to_numpy(k), memory[k])
    assert all(b["items"][0]["genes"] == GENES for b in fake.embed_bodies)


def test_async_client_streams_the_same_store(tmp_path):
    cells = _cells()
    fake = FakeService()

    async def run():
        client, _ = fake.async_client(chunk_size=7)
        async with client:
            memory = await client.embed(cells, GENES, model=MODEL, layers="all")
            handle = await client.embed(cells, GENES, model=MODEL, out=tmp_path / "a.zarr")
        return memory, handle

    memory, handle = asyncio.run(run())
    assert handle.complete and handle.layers == list(range(13))
    for k in range(13):
        np.testing.assert_array_equal(handle.to_numpy(k), memory[k])


def _sent_rows(fake: FakeService) -> list[int]:
    """The first column value of each chunk sent (row i holds 1 + i + noise; sorted)."""
    return sorted(int(item_matrix(b["items"][0]).shape[0]) for b in fake.embed_bodies)


def test_an_interrupted_run_costs_only_its_unfinished_chunks(tmp_path):
    cells = _cells()
    path = tmp_path / "l.zarr"
    # Call 0 is GET /models, calls 1-4 are chunks 0-3; the fifth chunk's connection drops.
    failing = FakeService(failures={5: httpx.ConnectError("connection reset")})
    client, _ = failing.client(chunk_size=7, max_retries=0, max_concurrency=1)
    with client, pytest.raises(TransportError):
        client.embed(cells, GENES, model=MODEL, layers=[0, 3], out=path)
    assert read_store(path).done_chunks() == {0, 1, 2, 3}
    assert read_store(path).missing_chunks() == [4, 5, 6, 7]

    fake = FakeService()
    client, _ = fake.client(chunk_size=7)
    with client:
        handle = client.embed(cells, GENES, model=MODEL, layers=[0, 3], out=path)
        memory = client.embed(cells, GENES, model=MODEL, layers=[0, 3])
    resumed = fake.embed_bodies[:4]  # the rerun's requests, before the in-memory run's 8
    starts = [float(item_matrix(b["items"][0]).toarray()[0].sum()) for b in resumed]
    expected = [float(cells[i * 7].sum()) for i in (4, 5, 6, 7)]
    assert len(fake.embed_bodies) == 4 + 8 and sorted(starts) == sorted(expected)
    for k in (0, 3):
        np.testing.assert_array_equal(handle.to_numpy(k), memory[k])

    again = FakeService()  # a third run has nothing left to do
    client, _ = again.client(chunk_size=7)
    with client:
        client.embed(cells, GENES, model=MODEL, layers=[0, 3], out=path)
    assert again.embed_bodies == []


@pytest.mark.parametrize(
    ("first", "second", "named"),
    [
        ({}, {"options": {"pre_normalized": True}}, "options"),
        ({}, {"layers": [0, 1]}, "layers"),
        ({}, {"pooling": "S"}, None),  # another pooling is another job: allowed, separate
    ],
)
def test_a_store_of_other_options_or_layers_is_refused(tmp_path, first, second, named):
    cells = _cells(20)
    path = tmp_path / "l.zarr"
    fake = FakeService()
    client, _ = fake.client(chunk_size=7)
    with client:
        client.embed(cells, GENES, model=MODEL, layers=[0, 2], out=path, **first)
        sent = len(fake.embed_bodies)
        kwargs = {"layers": [0, 2], **second}
        if named is None:
            handle = client.embed(cells, GENES, model=MODEL, out=path, **kwargs)
            assert handle.complete and handle.spec.pooling == "S"
            return
        with pytest.raises(StoreMismatch, match=f"refusing to mix results.*{named}"):
            client.embed(cells, GENES, model=MODEL, out=path, **kwargs)
    assert len(fake.embed_bodies) == sent  # refused before anything was sent


def test_a_store_from_other_weights_is_refused(tmp_path):
    cells = _cells(20)
    path = tmp_path / "l.zarr"
    for digest, refused in (("sha256:00", False), ("sha256:11", True)):
        fake = FakeService(checkpoint_digest=digest)
        client, _ = fake.client(chunk_size=7)
        with client:
            if refused:
                with pytest.raises(StoreMismatch, match="card_digest"):
                    client.embed(cells, GENES, model=MODEL, layers=0, out=path)
                assert fake.embed_bodies == []
            else:
                client.embed(cells, GENES, model=MODEL, layers=0, out=path)


def test_a_store_from_other_cells_is_refused_even_with_the_same_shape(tmp_path):
    cells = _cells(20)
    path = tmp_path / "l.zarr"
    fake = FakeService()
    client, _ = fake.client(chunk_size=7)
    other = cells.copy()
    other.data = other.data * 2  # same shape and sparsity pattern, other values
    with client:
        client.embed(cells, GENES, model=MODEL, layers=0, out=path)
        with pytest.raises(StoreMismatch, match="rows 0:7 were embedded from other cells"):
            client.embed(other, GENES, model=MODEL, layers=0, out=path)
        with pytest.raises(StoreMismatch, match="data_digest"):
            client.embed(cells[:19], GENES, model=MODEL, layers=0, out=path)
    assert len(fake.embed_bodies) == 3


def test_out_needs_a_card_and_excludes_write_to(tmp_path):
    fake = FakeService(checkpoint_digest="")
    client, _ = fake.client()
    with client:
        with pytest.raises(ValueError, match="checkpoint_digest"):
            client.embed(_cells(5), GENES, model=MODEL, out=tmp_path / "l.zarr")
        adata = ad.AnnData(X=_cells(5))
        with pytest.raises(ValueError, match="out and write_to: pick one"):
            client.embed(adata, GENES, model=MODEL, out=tmp_path / "l.zarr", write_to=adata)


def _peak_traced(run) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start


def test_memory_is_flat_when_streaming_and_one_result_in_memory(tmp_path):
    dim, n_layers = 16, 13
    fake = FakeService(dims={"official": dim}, record=False)  # keeps no request bodies
    client, _ = fake.client(chunk_size=200, max_concurrency=4, transport_format="npz")
    peaks = {}
    with client:
        client.models()
        for n_cells in (400, 2_000, 8_000):  # the first run only imports what reading needs
            cells = _cells(n_cells)
            # From a file, read a chunk at a time: an in-memory input is itself O(cells).
            source, _ = _input("h5ad", cells, tmp_path / str(n_cells))
            out = tmp_path / f"{n_cells}.zarr"
            peaks[n_cells] = _peak_traced(
                lambda source=source, out=out: client.embed(source, model=MODEL, out=out)
            )
        held = []
        in_memory = _peak_traced(lambda: held.append(client.embed(cells, GENES, model=MODEL)))
    result_bytes = 8_000 * dim * n_layers * 4  # 6.7 MB of float32
    # Streamed: four times the cells, about the same peak (the chunks in flight, and the fake
    # service's own copies of its replies, since it answers in this process); what grows is
    # the row pointer, 8 bytes a cell.
    assert peaks[8_000] < 1.2 * peaks[2_000] + 200_000, peaks
    assert peaks[8_000] < 0.4 * result_bytes, (peaks, result_bytes)
    # In memory: the result once, plus the chunks in flight (issue 19.3: it was ~2.6x).
    assert result_bytes <= in_memory < 1.35 * result_bytes, (in_memory, result_bytes)
