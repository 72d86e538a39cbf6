"""The API page, its document, /info and the metrics describe the real service.

Issue 17, points 3 and 9: /docs.json was BentoML's boilerplate (version None, badges, no
/models, an example payload that failed), the page loaded a third-party script, there was
no /info, no queue gauge, and BentoML's series said service_version="not available".
"""

from __future__ import annotations

import re

import httpx
import pytest

from scstrata_service.info import SERVICE_VERSION


@pytest.fixture(scope="module")
def spec(service_url) -> dict:
    return httpx.get(f"{service_url}/docs.json", timeout=30).json()


def test_the_document_names_the_service_and_every_route(spec):
    assert spec["info"]["title"] == "scstrata"
    assert spec["info"]["version"] == SERVICE_VERSION != "None"
    assert "BentoML" not in spec["info"]["description"]
    assert "shields.io" not in str(spec)
    for path in ("/embed", "/models", "/info", "/worker", "/livez", "/readyz", "/metrics"):
        assert path in spec["paths"], path
    embed = spec["paths"]["/embed"]["post"]
    assert embed["description"]
    assert "ticket" not in str(spec["components"]["schemas"]["EmbedRequest"])
    for code in ("400", "401", "413", "422", "503"):
        assert embed["responses"][code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }


def test_the_documented_example_succeeds_against_the_served_model(spec, service_url):
    body = spec["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]
    example = body["example"]
    (item,) = example["items"]
    assert item["model"] == "scf"  # the served model's name, not "string"
    reply = httpx.post(f"{service_url}/embed", json=example, timeout=120)
    assert reply.status_code == 200, reply.text
    (result,) = reply.json()
    n_layers = httpx.get(f"{service_url}/models").json()[0]["n_layers"]
    assert result["n_cells"] == 2 and result["n_unmapped_genes"] == 0
    assert sorted(result["layers"], key=int) == ["0", str(n_layers)]
    assert all(len(rows) == 2 for rows in result["layers"].values())


def test_the_page_loads_no_third_party_script(service_url):
    page = httpx.get(f"{service_url}/", timeout=30)
    assert page.status_code == 200 and "scstrata API" in page.text
    assert "googletagmanager" not in page.text
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("./") for s in sources), sources
    for source in sources:  # each is served by this server
        assert httpx.get(f"{service_url}/{source[2:]}", timeout=30).status_code == 200, source


def test_info_tells_version_device_dtype_limits_and_features(service_url):
    info = httpx.get(f"{service_url}/info", timeout=30).json()
    assert info["version"] == SERVICE_VERSION and info["loading"] is False
    (model,) = info["models"]
    assert model["name"] == "scf" and model["device"] == "cpu" and model["dtype"] == "float32"
    assert info["limits"]["max_cells_per_request"] > 0
    assert info["limits"]["max_body_bytes"] > 0
    assert info["workers"] >= 1 and info["worker"]["device"] == "cpu"
    assert {"npz", "cells_npz", "extra_outputs"} <= set(info["features"])
    assert set(info["queue"]) == {"cells", "tokens"}


def test_metrics_carry_the_service_version_and_the_queue(spec, service_url):
    body = spec["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]
    assert httpx.post(f"{service_url}/embed", json=body["example"], timeout=120).status_code == 200
    metrics = httpx.get(f"{service_url}/metrics", timeout=30).text
    # every series that counted something carries the version (BentoML registers some at
    # zero before the service sets it)
    counted = [
        line for line in metrics.splitlines()
        if "service_version=" in line and float(line.rsplit(" ", 1)[1]) > 0
    ]  # fmt: skip
    assert counted and all(f'service_version="{SERVICE_VERSION}"' in line for line in counted)
    queued = re.search(r"^scstrata_queued_cells(?:\{[^}]*\})? (\S+)$", metrics, re.M)
    assert queued and float(queued.group(1)) == 0.0  # every request answered
