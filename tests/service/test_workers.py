"""Several service workers on one host: worker count, device pinning, and two real workers."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import pytest

from scstrata_service.cli import main as service_cli
from scstrata_service.launcher import running_service
from scstrata_service.workers import bentoml_resources, device_for, parse_workers, visible_gpus

from helpers import embed_item, make_cells


def test_auto_is_one_worker_per_gpu_and_one_without_gpus():
    assert parse_workers(None, gpus=4) == 4
    assert parse_workers("auto", gpus=0) == 1
    assert parse_workers(" 3 ", gpus=8) == 3


@pytest.mark.parametrize("text", ["0", "-2", "many", "1.5"])
def test_a_bad_worker_count_names_the_setting(text):
    with pytest.raises(ValueError, match="SCSTRATA_WORKERS"):
        parse_workers(text, gpus=1)


def test_the_serve_flag_refuses_a_bad_count(capsys):
    with pytest.raises(SystemExit) as exit_info:
        service_cli(["serve", "--workers", "0", "--model", "a=scfoundation:/nowhere"])
    assert exit_info.value.code == 2
    assert "--workers must be a positive number" in capsys.readouterr().err


def test_workers_take_gpus_round_robin_unless_a_device_is_named():
    assert [device_for(None, w, cuda_devices=2) for w in (1, 2, 3)] == [
        "cuda:0",
        "cuda:1",
        "cuda:0",
    ]
    assert device_for("cuda:3", 2, cuda_devices=4) == "cuda:3"
    assert device_for(None, 2, cuda_devices=0) is None  # the backends' default: CPU


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,-1,3")  # CUDA stops at the invalid entry
    assert visible_gpus() == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == 0


def test_gpus_are_claimed_from_bentoml_only_when_there_are_some():
    assert bentoml_resources(0) == {}
    assert bentoml_resources(2) == {"gpu": 2}


def _connection_per_worker(url: str, workers: int, tries: int = 60) -> dict[int, httpx.Client]:
    """One kept-alive connection to each worker: the kernel gives each new connection to one
    of the processes sharing the socket, and every request on it goes to that process."""
    found: dict[int, httpx.Client] = {}
    for _ in range(tries):
        client = httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1))
        worker = client.get("/worker").json()["worker"]
        if worker in found:
            client.close()
        else:
            found[worker] = client
        if len(found) == workers:
            return found
        time.sleep(0.05)
    for client in found.values():
        client.close()
    raise AssertionError(f"only workers {sorted(found)} answered {tries} new connections")


def test_two_workers_answer_each_with_its_own_index(tiny_checkpoint, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=5, seed=71)
    item = embed_item(counts, genes, layers="all")
    with running_service(
        [f"scf=scfoundation:{tiny_checkpoint.parent}"], extra_args=["--workers", "2"]
    ) as url:
        clients = _connection_per_worker(url, workers=2)
        try:
            info = {w: c.get("/worker").json() for w, c in clients.items()}
            replies = {w: c.post("/embed", json={"items": [item]}) for w, c in clients.items()}
        finally:
            for client in clients.values():
                client.close()
        metrics = httpx.get(f"{url}/metrics", timeout=10).text

    assert sorted(info) == [1, 2]
    for worker, placement in info.items():
        assert placement["worker"] == worker and placement["workers"] == 2
        assert placement["device"] == "cpu"
    assert {r.status_code for r in replies.values()} == {200}
    one, two = (replies[w].json()[0]["layers"] for w in (1, 2))
    assert sorted(one, key=int) == ["0", "1", "2", "3"]
    for k in one:  # both workers load the same weights
        np.testing.assert_allclose(np.array(one[k]), np.array(two[k]), rtol=1e-5, atol=1e-5)

    gauges = re.findall(r"^scstrata_worker\{([^}]*)\} 1\.0$", metrics, flags=re.M)
    assert sorted(re.search(r'worker="(\d+)"', g).group(1) for g in gauges) == ["1", "2"]
    assert all('device="cpu"' in g for g in gauges)
    for worker in ("1", "2"):
        cells = re.search(
            rf'^scstrata_cells_embedded_total\{{[^}}]*worker="{worker}"[^}}]*\}} (\S+)$',
            metrics,
            flags=re.M,
        )
        assert cells is not None and float(cells.group(1)) == 5.0
