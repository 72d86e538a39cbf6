"""Streaming to a store against the real service on loopback: a client killed mid-run and
rerun asks only for the chunks it had not written (counted at the service's /metrics)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anndata as ad
import httpx
import numpy as np
import pandas as pd
from client_fakes import RecordingTransport

from scstrata_client import Client
from scstrata_client.store import read_store

from helpers import make_cells

CHILD = """
import os, signal
from client_fakes import RecordingTransport
from scstrata_client import Client

def die(n_replies):
    if n_replies == 3:  # killed with the third reply received, before it is written
        os.kill(os.getpid(), signal.SIGKILL)

transport = RecordingTransport(on_reply=die)
with Client({url!r}, chunk_size=5, max_concurrency=1, cache=False, transport=transport) as c:
    c.embed({cells!r}, model="scf", pooling="S", out={store!r})
"""


def _cells_embedded(url: str) -> float:
    """The service's own count of cells embedded for 'scf' (summed over its workers)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("scstrata_cells_embedded_total{") and 'model="scf"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_killed_client_resumes_with_only_the_unwritten_chunks(service_url, vocabulary, tmp_path):
    counts, genes = make_cells(vocabulary, n_cells=40, seed=31)  # 8 chunks of 5
    cells = tmp_path / "cells.h5ad"
    ad.AnnData(X=counts.astype(np.float32), var=pd.DataFrame(index=genes)).write_h5ad(cells)
    store = tmp_path / "layers.zarr"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    code = CHILD.format(url=service_url, cells=str(cells), store=str(store))
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert read_store(store).done_chunks() == {0, 1}

    before = _cells_embedded(service_url)
    transport = RecordingTransport()
    with Client(service_url, chunk_size=5, cache=False, transport=transport) as client:
        handle = client.embed(cells, model="scf", pooling="S", out=store)
        fresh = client.embed(counts, genes, model="scf", pooling="S")
    assert len(transport.embed_requests) == 6 + 8  # the rerun's 6 chunks, then the fresh run
    assert _cells_embedded(service_url) - before == 30 + 40
    assert handle.complete and handle.layers == [0, 1, 2, 3]
    for k in range(4):
        np.testing.assert_array_equal(handle.to_numpy(k), fresh[k])
