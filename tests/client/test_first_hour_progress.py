"""The progress bar counts cells as each reply arrives, with an average rate for its ETA, and
``progress=False`` prints nothing (issue 17, point 4)."""

from __future__ import annotations

import asyncio
import io
from typing import ClassVar

import numpy as np
import pytest
import tqdm.std
from client_fakes import FakeService

from scstrata_client import _base


class RecordingBar(tqdm.std.tqdm):
    """A terminal bar into a buffer that records each update and whether it was drawn."""

    made: ClassVar[list[RecordingBar]] = []

    def __init__(self, *args, **kwargs):
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)
        self.updates: list[tuple[int, bool]] = []  # (cells, drawn at once)
        RecordingBar.made.append(self)

    def update(self, n=1):
        shown = super().update(n)
        self.updates.append((n, self.disable or self.last_print_n == self.n))
        return shown


@pytest.fixture
def bars(monkeypatch):
    RecordingBar.made = []
    monkeypatch.setattr(_base, "tqdm", RecordingBar)
    return RecordingBar.made


def test_the_bar_moves_by_each_replys_cells_as_it_arrives(bars, counts, gene_names):
    fake = FakeService(delay=0.05)
    client, _ = fake.client(chunk_size=3, max_concurrency=2, progress=True)
    with client:
        client.embed(counts, gene_names, model="scfoundation", layers=0)
    (bar,) = bars
    # 7 cells in chunks of 3, 3 and 1, each counted when its reply came, each drawn at once
    assert sorted(n for n, _ in bar.updates) == [1, 3, 3]
    assert all(drawn for _, drawn in bar.updates)
    assert (bar.n, bar.total) == (7, 7)
    # the rate behind the ETA is the average since the start, not a moving average of bursts
    assert bar.smoothing == 0 and bar.format_dict["rate"] is None


def test_cached_cells_count_as_done_but_not_in_the_rate(bars, counts, gene_names, tmp_path):
    fake = FakeService()
    client, _ = fake.client(chunk_size=3, progress=True, cache=True, cache_dir=tmp_path)
    client.cache.block_rows = 3  # cache entries of 3 cells, so that chunk 0 is one of them
    with client:
        client.embed(counts[:3], gene_names, model="scfoundation", layers=0)  # chunk 0 cached
        client.embed(counts, gene_names, model="scfoundation", layers=0)
    _, second = bars
    assert (second.initial, second.n) == (3, 7)
    assert sorted(n for n, _ in second.updates) == [1, 3]
    # tqdm's average rate is (n - initial) / elapsed: the cached cells add nothing to it
    assert second.format_dict["initial"] == 3


def test_progress_false_prints_nothing(counts, gene_names, capsys):
    fake = FakeService()
    client, _ = fake.client(chunk_size=2, progress=False)
    with client:
        client.embed(counts, gene_names, model="scfoundation", layers=0)
    assert capsys.readouterr() == ("", "")
    shown, _ = fake.client(chunk_size=2, progress=True)
    with shown:
        shown.embed(counts, gene_names, model="scfoundation", layers=0)
    assert "7.00/7.00" in capsys.readouterr().err  # the same run with a bar does print


def _async_embed(client, counts, gene_names):
    async def main():
        async with client:
            return await client.embed(counts, gene_names, model="scfoundation", layers=0)

    return asyncio.run(main())


def test_the_async_client_counts_cells_as_replies_arrive(bars, counts, gene_names):
    client, _ = FakeService(delay=0.05).async_client(chunk_size=3, max_concurrency=3, progress=True)
    result = _async_embed(client, counts, gene_names)
    np.testing.assert_allclose(result[0][:, 0], counts.sum(axis=1))
    (bar,) = bars
    assert sorted(n for n, _ in bar.updates) == [1, 3, 3]
    assert all(drawn for _, drawn in bar.updates) and bar.n == 7


def test_the_async_client_with_progress_false_prints_nothing(counts, gene_names, capsys):
    client, _ = FakeService().async_client(chunk_size=2, progress=False)
    _async_embed(client, counts, gene_names)
    assert capsys.readouterr() == ("", "")
