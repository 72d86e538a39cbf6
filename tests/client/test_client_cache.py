"""The on-disk result cache: keys, atomic writes, LRU eviction, and resuming runs."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import httpx
import numpy as np
import pytest
import scipy.sparse as sp
from client_fakes import FakeService

from scstrata_client import ChunkCache, Client, TransportError
from scstrata_client._cache import digest_chunk, digest_genes, result_key
from scstrata_client._protocol import canonical_csr


def _array(rows=100, dim=10, value=0.0):
    return np.full((rows, dim), value, dtype=np.float32)


def _entry(value=0.0, layers=(0, 3)):
    return {k: _array(value=value + k) for k in layers}


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def test_put_then_get_round_trips_every_layer_in_one_file(tmp_path):
    cache = ChunkCache(tmp_path)
    cache.put("ab" * 32, _entry(1.5))
    got = cache.get("ab" * 32, 100, 10)
    assert sorted(got) == [0, 3]
    for k in (0, 3):
        np.testing.assert_array_equal(got[k], _array(value=1.5 + k))
    assert [p.suffix for p in _files(tmp_path)] == [".npz"]  # no temporary left behind
    assert cache.get("cd" * 32, 100) is None


def test_an_entry_of_the_wrong_shape_or_a_corrupt_file_is_a_miss_and_removed(tmp_path):
    cache = ChunkCache(tmp_path)
    cache.put("aa" * 32, _entry())
    assert cache.get("aa" * 32, 99) is None
    assert _files(tmp_path) == []
    cache.put("bb" * 32, _entry())
    (path,) = _files(tmp_path)
    path.write_bytes(b"PK garbage")
    assert cache.get("bb" * 32, 100) is None
    assert _files(tmp_path) == []


def _flip_a_byte_of_layer_data(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    # The float32 bytes of the first layer: right after the header of its .npy member.
    at = raw.index(b"\x93NUMPY") + 200
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("recompute_zip_crc", [False, True], ids=["as-flipped", "crc-fixed"])
def test_a_flipped_byte_fails_the_checksum_and_is_a_miss(tmp_path, recompute_zip_crc):
    cache = ChunkCache(tmp_path)
    cache.put("aa" * 32, _entry())
    (path,) = _files(tmp_path)
    if recompute_zip_crc:
        # A copy that rewrote the archive (valid zip CRCs) but carried the flipped value:
        # only the entry's own sha256 can tell.
        with np.load(path) as archive:
            members = {name: archive[name] for name in archive.files}
        members["layer_3"] = members["layer_3"].copy()
        members["layer_3"][5, 5] = np.nextafter(members["layer_3"][5, 5], np.float32(9))
        np.savez(path, **members)
    else:
        _flip_a_byte_of_layer_data(path)
    assert cache.get("aa" * 32, 100, 10) is None
    assert _files(tmp_path) == []


def test_a_failed_write_leaves_neither_a_file_nor_a_temporary(tmp_path, monkeypatch):
    cache = ChunkCache(tmp_path)

    def broken_savez(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    cache.put("aa" * 32, _entry())  # logged, not raised: the embedding itself succeeded
    assert _files(tmp_path) == []


def test_least_recently_used_entries_are_evicted_first(tmp_path):
    probe = ChunkCache(tmp_path / "probe")
    probe.put("00" * 32, _entry())
    one = probe.size()  # bytes of one entry
    cache = ChunkCache(tmp_path / "lru", max_bytes=int(3.5 * one))
    keys = {name: name * 64 for name in "abcd"}
    for i, name in enumerate("abc"):
        cache.put(keys[name], _entry(value=i))
        path = next((tmp_path / "lru").rglob(f"{keys[name]}.npz"))
        os.utime(path, (1_000_000 + i, 1_000_000 + i))  # a is oldest, then b, then c
    assert cache.get(keys["a"], 100) is not None  # a read makes a the most recent
    cache.put(keys["d"], _entry(value=3))
    assert cache.get(keys["b"], 100) is None
    assert all(cache.get(keys[n], 100) is not None for n in "acd")
    assert cache.size() <= cache.max_bytes


def test_keys_change_with_every_component_but_not_the_layers():
    base = dict(model="m", card_digest="c", options_digest="o", pooling="p")
    keys = {result_key("data", **base)}
    keys.add(result_key("other", **base))
    for field, value in [
        ("model", "m2"),
        ("card_digest", "c2"),
        ("options_digest", "o2"),
        ("pooling", "p2"),
    ]:
        keys.add(result_key("data", **(base | {field: value})))
    assert len(keys) == 6


def test_data_digest_depends_on_values_and_genes_not_on_storage_details():
    dense = np.array([[1.0, 0, 2], [0, 3, 0]])
    genes = digest_genes(["a", "b", "c"])
    plain = digest_chunk(canonical_csr(sp.csr_matrix(dense)), genes)
    # The same numbers with a duplicate entry, a stored zero and 64-bit indices.
    messy = sp.csr_matrix(
        (
            np.array([1.0, 1.0, 1.0, 0.0, 3.0]),
            np.array([2, 0, 2, 1, 1], dtype=np.int64),
            np.array([0, 3, 5]),
        ),
        shape=(2, 3),
    )
    assert digest_chunk(canonical_csr(messy), genes) == plain
    assert digest_chunk(canonical_csr(sp.csr_matrix(dense * 2)), genes) != plain
    assert digest_chunk(canonical_csr(sp.csr_matrix(dense)), digest_genes(["a", "b", "d"])) != plain


def _cached_client(fake, tmp_path, chunk_size=3, block_rows=3, **kwargs):
    """A client whose cache entries are blocks of ``block_rows`` rows (256 by default)."""
    client, transport = fake.client(cache=True, cache_dir=tmp_path, chunk_size=chunk_size, **kwargs)
    client.cache.block_rows = block_rows
    return client, transport


def test_a_second_run_is_served_from_the_cache(tmp_path, counts, gene_names):
    fake = FakeService()
    client, _ = _cached_client(fake, tmp_path)
    with client:
        first = client.embed(counts, gene_names, model="scfoundation", layers=[0, 4])
        n_calls = len(fake.embed_bodies)
        adata = ad.AnnData(X=counts)
        second = client.embed(
            counts, gene_names, model="scfoundation", layers=[0, 4], write_to=adata
        )
    assert n_calls == 3 and len(fake.embed_bodies) == 3
    for k in (0, 4):
        np.testing.assert_array_equal(first[k], second[k])
    # What the first reply said about unmapped genes is cached too.
    assert adata.uns["scstrata"]["X_scfoundation_layer4"]["n_unmapped_genes"] == 1


def test_an_interrupted_run_resumes_without_recomputing(tmp_path, counts, gene_names):
    failing = FakeService(failures={3: httpx.ConnectError("connection reset")})
    client, _ = _cached_client(failing, tmp_path, max_retries=0, max_concurrency=1)
    with client, pytest.raises(TransportError):
        client.embed(counts, gene_names, model="scfoundation", layers="all")
    assert len(failing.embed_bodies) == 3  # chunks 0 and 1 came back, chunk 2 failed

    fake = FakeService()
    client, _ = _cached_client(fake, tmp_path)
    with client:
        result = client.embed(counts, gene_names, model="scfoundation", layers="all")
    (body,) = fake.embed_bodies  # only chunk 2 (row 6) is asked for
    assert body["items"][0]["cells"]["shape"] == [1, 4]
    assert sorted(result) == list(range(13))
    np.testing.assert_allclose(result[7][:, 0], counts.sum(axis=1))
    np.testing.assert_array_equal(result[7][:, 1], np.full(7, 7.0))


def test_only_missing_layers_are_asked_for(tmp_path, counts, gene_names):
    fake = FakeService()
    client, _ = _cached_client(fake, tmp_path)
    with client:
        client.embed(counts, gene_names, model="scfoundation", layers=[0, 5])
        layer5 = client.layer(counts, "scfoundation", 5, genes=gene_names)
        assert len(fake.embed_bodies) == 3
        both = client.embed(counts, gene_names, model="scfoundation", layers=[0, 5, -1])
    assert [b["items"][0]["layers"] for b in fake.embed_bodies[3:]] == [[12]] * 3
    assert sorted(both) == [0, 5, 12]
    np.testing.assert_array_equal(both[5], layer5)


def test_sweep_yields_cached_layers_before_sending_anything(tmp_path, counts, gene_names):
    fake = FakeService(n_layers=3)
    client, _ = _cached_client(fake, tmp_path)
    with client:
        client.layer(counts, "scfoundation", 2, genes=gene_names)
        before = len(fake.embed_bodies)
        sweep = client.sweep(counts, "scfoundation", genes=gene_names)
        first = next(sweep)
        assert first[0] == 2 and len(fake.embed_bodies) == before
        rest = list(sweep)
    assert [k for k, _ in rest] == [0, 1, 3]
    assert [b["items"][0]["layers"] for b in fake.embed_bodies[before:]] == [[0, 1, 3]] * 3


@pytest.mark.parametrize(
    ("change", "value"), [("options", {"pre_normalized": True}), ("pooling", "S")]
)
def test_other_options_or_pooling_miss_the_cache(tmp_path, counts, gene_names, change, value):
    fake = FakeService()
    client, _ = _cached_client(fake, tmp_path)
    with client:
        client.embed(counts, gene_names, model="scfoundation", layers=0)
        client.embed(counts, gene_names, model="scfoundation", layers=0, **{change: value})
    assert len(fake.embed_bodies) == 6


def test_other_weights_miss_the_cache(tmp_path, counts, gene_names):
    for digest in ("sha256:00", "sha256:11"):
        fake = FakeService(checkpoint_digest=digest)
        client, _ = _cached_client(fake, tmp_path)
        with client:
            client.embed(counts, gene_names, model="scfoundation", layers=0)
        assert len(fake.embed_bodies) == 3


def test_any_other_card_field_separates_results(tmp_path, counts, gene_names):
    for version in ("1.0", "1.1"):
        fake = FakeService()
        card = fake.card() | {"code_version": version}  # a field the service may add
        fake.card = lambda card=card: card
        client, _ = _cached_client(fake, tmp_path)
        with client:
            client.embed(counts, gene_names, model="scfoundation", layers=0)
        assert len(fake.embed_bodies) == 3


def test_a_card_without_checkpoint_digest_is_never_cached(tmp_path, counts, gene_names):
    fake = FakeService(checkpoint_digest="")
    client, _ = _cached_client(fake, tmp_path)
    with client:
        client.embed(counts, gene_names, model="scfoundation", layers=0)
    assert _files(tmp_path) == []


def test_cache_location_and_switch(tmp_path, monkeypatch, counts, gene_names):
    monkeypatch.setenv("SCSTRATA_CACHE_DIR", str(tmp_path / "env"))
    assert Client("http://svc").cache.directory == tmp_path / "env"
    assert Client("http://svc", cache_dir=tmp_path / "arg").cache.directory == tmp_path / "arg"
    assert Client("http://svc", cache=False).cache is None
    fake = FakeService()
    client, _ = fake.client(cache=True, chunk_size=3)  # the directory from the environment
    with client:
        client.embed(counts, gene_names, model="scfoundation", layers=[0, 1])
    # one file per block of up to 256 cells (all its layers; 7 cells: one), + the genes' record
    assert len(_files(tmp_path / "env")) == 1 + 1


def test_the_size_limit_holds_after_a_run(tmp_path, counts, gene_names):
    fake = FakeService(dims={"official": 64})  # 10 KB per chunk entry (3 cells x 13 layers)
    client, _ = _cached_client(fake, tmp_path, cache_max_bytes=25_000)
    with client:
        result = client.embed(counts, gene_names, model="scfoundation", layers="all")
    assert len(result) == 13  # the result is whole even though the cache could not keep it
    assert 0 < client.cache.size() <= 25_000


def test_a_flipped_byte_in_a_cached_chunk_is_fetched_again(tmp_path, counts, gene_names):
    fake = FakeService()
    client, _ = _cached_client(fake, tmp_path)
    with client:
        first = client.embed(counts, gene_names, model="scfoundation", layers=[0, 4])
        entries = [p for p in _files(tmp_path) if p.suffix == ".npz"]
        assert len(entries) == 3
        _flip_a_byte_of_layer_data(entries[1])
        again = client.embed(counts, gene_names, model="scfoundation", layers=[0, 4])
    assert len(fake.embed_bodies) == 4  # the damaged chunk, and only it, was asked for again
    assert fake.embed_bodies[3]["items"][0]["cells"]["shape"] == [3, 4]
    for k in (0, 4):
        np.testing.assert_array_equal(again[k], first[k])


def test_more_layers_of_a_cached_chunk_rewrite_its_one_entry(tmp_path, counts, gene_names):
    fake = FakeService()
    client, _ = _cached_client(fake, tmp_path)
    with client:
        client.embed(counts, gene_names, model="scfoundation", layers=[0])
        client.embed(counts, gene_names, model="scfoundation", layers=[0, 7])
        assert [b["items"][0]["layers"] for b in fake.embed_bodies[3:]] == [[7]] * 3
        both = client.embed(counts, gene_names, model="scfoundation", layers=[7, 0])
    assert len(fake.embed_bodies) == 6  # the third call came from the cache
    assert len([p for p in _files(tmp_path) if p.suffix == ".npz"]) == 3
    np.testing.assert_array_equal(both[7][:, 1], np.full(7, 7.0))


@pytest.mark.parametrize("second_chunk_size", [1, 2, 4, 7])
def test_a_rerun_with_another_chunk_size_is_served_from_the_cache(
    tmp_path, counts, gene_names, second_chunk_size
):
    fake = FakeService()
    client, _ = _cached_client(fake, tmp_path, chunk_size=3, block_rows=2)
    with client:
        first = client.embed(counts, gene_names, model="scfoundation", layers=[0, 4])
    assert len(fake.embed_bodies) == 3
    assert len([p for p in _files(tmp_path) if p.suffix == ".npz"]) == 4  # blocks of 2 rows

    again = FakeService()
    client, _ = _cached_client(again, tmp_path, chunk_size=second_chunk_size, block_rows=2)
    with client:
        second = client.embed(counts, gene_names, model="scfoundation", layers=[0, 4])
    assert again.embed_bodies == []  # every chunk of the new size lies in cached blocks
    for k in (0, 4):
        np.testing.assert_array_equal(second[k], first[k])


def test_a_block_is_cached_once_every_chunk_over_it_came_back(tmp_path, counts, gene_names):
    """Chunks of 2 rows over blocks of 3: a block straddling a failed chunk is not cached, and
    the rerun (chunks of 4) asks only for the chunks that overlap it."""
    failing = FakeService(failures={3: httpx.ConnectError("connection reset")})
    client, _ = _cached_client(failing, tmp_path, chunk_size=2, max_retries=0, max_concurrency=1)
    with client, pytest.raises(TransportError):
        client.embed(counts, gene_names, model="scfoundation", layers="all")
    # rows 0-3 came back (chunks 0, 1): block 0 (rows 0-2) is cached, block 1 (3-5) is not
    assert len([p for p in _files(tmp_path) if p.suffix == ".npz"]) == 1

    fake = FakeService()
    client, _ = _cached_client(fake, tmp_path, chunk_size=4)
    with client:
        result = client.embed(counts, gene_names, model="scfoundation", layers="all")
    # chunk 0 (rows 0-3) overlaps block 1, chunk 1 (rows 4-6) blocks 1 and 2: both are sent
    assert sorted(b["items"][0]["cells"]["shape"][0] for b in fake.embed_bodies) == [3, 4]
    np.testing.assert_allclose(result[7][:, 0], counts.sum(axis=1))
    assert len([p for p in _files(tmp_path) if p.suffix == ".npz"]) == 3
