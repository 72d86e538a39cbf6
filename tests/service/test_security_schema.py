"""The API document against the running demo service: schemathesis with every check, and the
statuses it lists are those of docs/api.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from scstrata_service.openapi import document

from helpers import server_processes

ROOT = Path(__file__).resolve().parents[2]
ST = Path(sys.executable).parent / "st"  # schemathesis, in service[dev]

# JSON Schema cannot say that `genes` must match the columns of `cells` and name genes the
# model knows, nor that exactly one of cells, cells_npz and h5ad is sent: such requests are
# schema-valid and get a 400 naming the field, so the check that schema-valid requests are
# accepted takes 400 (besides its defaults) on /embed. Every other check runs as it comes.
CONFIG = """
[[operations]]
include-path = "/embed"
checks.positive_data_acceptance.expected-statuses = ["2XX", "400", "401", "429", "503"]
"""


def test_schemathesis_with_every_check_finds_no_failure(service_url, tmp_path):
    """Hundreds of requests, most of them refused: no failure, and no traceback in the
    server's log (a 4xx used to log a 2.4 KB ERROR traceback each)."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    log = Path(server_processes(service_url)[0].environ()["BENTOML_HOME"]) / "server.log"
    log_before = log.stat().st_size
    run = subprocess.run(
        [str(ST), "--config-file", str(config), "run", f"{service_url}/docs.json"]
        + ["--checks", "all", "--max-examples", "20", "--generation-deterministic"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-6000:]
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated and int(generated.group(1)) > 100, run.stdout[-2000:]
    assert "failure" not in run.stdout.split("Test cases:")[-1], run.stdout[-2000:]
    with log.open("rb") as server_log:
        server_log.seek(log_before)
        logged = server_log.read().decode(errors="replace")
    assert "Traceback" not in logged and "[ERROR]" not in logged, logged[-3000:]


def test_the_served_example_is_a_valid_request(service_url):
    spec = httpx.get(f"{service_url}/docs.json", timeout=10).json()
    body = spec["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]
    reply = httpx.post(f"{service_url}/embed", json=body["example"], timeout=60)
    assert reply.status_code == 200, reply.text
    model = spec["components"]["schemas"]["EmbedItem"]["properties"]["model"]
    assert model["enum"] == ["scf"]


def test_every_status_of_docs_api_md_is_in_the_document_with_the_error_body():
    table = (ROOT / "docs" / "api.md").read_text().split("### Statuses and bodies")[1]
    documented = set(re.findall(r"^\| `(\d{3})` \|", table, re.MULTILINE)) - {"200"}
    responses = document()["paths"]["/embed"]["post"]["responses"]
    assert documented == set(responses) - {"200"}
    assert documented >= {"400", "401", "405", "408", "413", "415", "422", "429", "500", "503"}
    for status in documented:
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}


def test_a_400_body_matches_the_error_schema(service_url):
    import jsonschema_rs  # schemathesis's own validator

    schema = document()["components"]["schemas"]["Error"]
    for body in (b"{", b'{"items": [{"model": 3}]}', b'{"items": []}'):
        reply = httpx.post(
            f"{service_url}/embed",
            content=body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert reply.status_code == 400, reply.text
        jsonschema_rs.validate(schema, reply.json())
        assert isinstance(reply.json()["detail"], list)
