"""A server that cannot start says why once and exits; one that is loading answers /livez.

Issue 17, points 2 and 6: a bad checkpoint or a malformed SCSTRATA_MODELS used to make
BentoML restart its worker forever; a port in use printed BentoML's traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import torch

from scstrata_service.launcher import free_port
from scstrata_service.registry import specs_from_env

from helpers import embed_item, make_cells

# A server start on this machine takes ~15 s; a crash loop would run until the timeout.
EXIT_WITHIN_S = 150


def _env(**extra: str) -> dict:
    home = tempfile.mkdtemp(prefix="bentoml-home-")
    return {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": home, **extra}


def _run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=EXIT_WITHIN_S, check=False
    )


def _serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "scstrata_service.cli", "serve", "--host", "127.0.0.1"]
    return _run([*command, *args], env or _env())


def test_a_checkpoint_that_cannot_load_stops_the_server_once_with_the_error(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    torch.save({"not": "a checkpoint"}, folder / "models.ckpt")  # a torch file, wrong content
    done = _serve("--port", str(free_port()), "--model", f"bad=scfoundation:{folder}")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("scstrata: the server stopped because a model could not be loaded")
    assert "CheckpointError" in last
    # once: the worker was not restarted (BentoML logs each start of the service instance)
    assert output.count("could not be loaded") == 2  # the worker's log line and the last line
    assert "Traceback" not in output  # `--debug` shows it


def test_the_bento_exits_on_a_malformed_models_variable():
    """`bentoml serve` of the service, as the Bento runs it, with the --model syntax mangled."""
    env = _env(SCSTRATA_MODELS="[scf=scfoundation:/models/scf]")
    port = str(free_port())
    command = [sys.executable, "-m", "bentoml", "serve", "scstrata_service.service:Embedder"]
    done = _run([*command, "--host", "127.0.0.1", "--port", port], env)
    assert done.returncode == 1, (done.stdout + done.stderr)[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "SCSTRATA_MODELS: expected a JSON list" in last
    assert '[{"name": "scf", "family": "scfoundation", "path": "/models/scf"}]' in last


def test_models_variable_takes_a_json_list_or_model_specs(monkeypatch, tiny_checkpoint):
    path = str(tiny_checkpoint.parent)
    monkeypatch.setenv("SCSTRATA_MODELS", f"a=scfoundation:{path} b=scfoundation:{path}")
    assert [(s.name, s.family, s.path) for s in specs_from_env()] == [
        ("a", "scfoundation", path),
        ("b", "scfoundation", path),
    ]
    monkeypatch.setenv("SCSTRATA_MODELS", '[{"name": "a", "family": "nope", "path": "/x"}]')
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        specs_from_env()
    monkeypatch.setenv("SCSTRATA_MODELS", "")
    with pytest.raises(ValueError, match="--model NAME=FAMILY:PATH"):
        specs_from_env()


def test_a_port_in_use_is_one_line_naming_the_fix(tiny_checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve("--port", str(port), "--model", f"scf=scfoundation:{tiny_checkpoint}")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"scstrata serve: --port {port}: 127.0.0.1:{port} is already in use (another scstrata "
        f"serve?); stop that process or pick another port, e.g. --port {port + 1}"
    )


SLOW_LOAD = textwrap.dedent(
    """
    # injected by the test: every model load takes SCSTRATA_TEST_LOAD_DELAY more seconds
    import os, time
    from scstrata_service import registry

    _load = registry.Registry.load.__func__

    def _slow(cls, *args, **kwargs):
        time.sleep(float(os.environ["SCSTRATA_TEST_LOAD_DELAY"]))
        return _load(cls, *args, **kwargs)

    registry.Registry.load = classmethod(_slow)
    """
)


def test_livez_answers_while_the_models_load(tmp_path, tiny_checkpoint, vocabulary):
    (tmp_path / "sitecustomize.py").write_text(SLOW_LOAD)
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    env = _env(PYTHONPATH=path, SCSTRATA_TEST_LOAD_DELAY="30")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "scstrata_service.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--model", f"scf=scfoundation:{tiny_checkpoint}"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        live = _poll(f"{url}/livez", proc, EXIT_WITHIN_S)
        item = embed_item(*make_cells(vocabulary, n_cells=2, n_genes=50), model="scf")
        loading = [httpx.get(f"{url}/readyz"), httpx.get(f"{url}/models")]
        loading.append(httpx.post(f"{url}/embed", json={"items": [item]}))
        ready = _poll(f"{url}/readyz", proc, EXIT_WITHIN_S)
        models = httpx.get(f"{url}/models")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert live < ready  # alive before ready, by the injected load time
    assert [reply.status_code for reply in loading] == [503, 503, 503]
    assert all("still loading" in reply.text for reply in loading[1:]), [r.text for r in loading]
    assert [reply.headers.get("retry-after") for reply in loading[1:]] == ["5", "5"]
    assert [card["name"] for card in models.json()] == ["scf"]


def _poll(url: str, proc: subprocess.Popen, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic()
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"{url} not 200 within {timeout} s")


def test_demo_checkpoints_are_readable_by_other_users(tmp_path):
    """The image's user (uid 10001) reads checkpoints mounted read-only from the host."""
    from scstrata_service.families import fabricate

    for family in ("scfoundation", "tahoe", "geneformer"):
        folder = fabricate(family, tmp_path / family, hidden=16, n_layers=1, n_heads=2)
        files = [p for p in Path(folder).rglob("*") if p.is_file()]
        assert files
        assert all(p.stat().st_mode & 0o004 for p in files), [
            (p.name, oct(p.stat().st_mode)) for p in files
        ]
