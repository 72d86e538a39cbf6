"""Two dispatches in flight (dispatch.py): the next batch waits ready while one computes, and
the accelerator still runs one dispatch's passes at a time."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from starlette.testclient import TestClient

from scstrata_service import service
from scstrata_service.dispatch import allow_overlapping_dispatches
from scstrata_service.runtime.backend import PackedBackend
from scstrata_service.settings import SETTINGS

from helpers import embed_item, make_cells


class Concurrency:
    """Counts how many calls of a function are running at once."""

    def __init__(self, function, pause_s: float = 0.0):
        self.function, self.pause_s = function, pause_s
        self.running = self.peak = self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.calls += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(self.pause_s)  # long enough for the next dispatch to be formed
            return self.function(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def test_the_default_is_two_dispatches_in_flight():
    assert SETTINGS.dispatches == 2
    assert service.Embedder.config["threads"] == 2


def test_dispatches_overlap_but_take_the_accelerator_in_turn(
    tiny_checkpoint, tiny_backend, vocabulary, monkeypatch
):
    models = [{"name": "scf", "family": "scfoundation", "path": str(tiny_checkpoint.parent)}]
    monkeypatch.setenv("SCSTRATA_MODELS", json.dumps(models))
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "true")
    items, expected = [], []
    for i in range(16):
        counts, genes = make_cells(vocabulary, n_cells=3, n_genes=50, seed=300 + i)
        items.append(embed_item(counts, genes, layers=[i % 4]))
        tokens = tiny_backend.tokenize(counts, genes, {})
        expected.append(tiny_backend.embed(tokens, [i % 4], ["official"])["official"][i % 4])

    dispatches = Concurrency(service.run_jobs, pause_s=0.3)
    passes = Concurrency(PackedBackend.read)
    monkeypatch.setattr(service, "run_jobs", dispatches)
    monkeypatch.setattr(PackedBackend, "read", lambda self, *args: passes(self, *args))
    with TestClient(service.Embedder.to_asgi()) as client, ThreadPoolExecutor(16) as pool:
        for _ in range(300):  # the models load in the background (startup.py)
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.1)
        replies = list(pool.map(lambda it: client.post("/embed", json={"items": [it]}), items))

    assert [r.status_code for r in replies] == [200] * len(items)
    for reply, item, want in zip(replies, items, expected):
        (result,) = reply.json()
        got = np.array(result["layers"][str(item["layers"][0])])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert dispatches.calls < len(items)  # requests were still merged into shared dispatches
    assert dispatches.peak == 2  # the next dispatch was formed while one was running
    assert passes.peak == 1  # but forward passes never ran side by side


def test_one_dispatch_in_flight_leaves_bentoml_alone():
    assert allow_overlapping_dispatches(1) is False
    with pytest.raises(ValueError, match="SCSTRATA_DISPATCHES"):
        allow_overlapping_dispatches(0)
