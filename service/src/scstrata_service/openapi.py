"""The API document at ``/docs.json`` and the page at ``/`` that shows it.

BentoML's own document describes its internal batching input (request tickets), carries its
boilerplate and badges, and misses the routes mounted beside it; its page loads a third-party
tag manager. This one describes the API a client calls (docs/api.md), with an example that a
running server accepts (built from its first model), and the page uses only the Swagger UI
files BentoML serves locally.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from scstrata_service.contract import ModelCard
from scstrata_service.info import SERVICE_VERSION
from scstrata_service.schemas import EmbedRequest, EmbedResult

REF = "#/components/schemas/{model}"

DESCRIPTION = (
    "Cell embeddings from any layer of single-cell foundation models. `POST /embed` takes "
    "cells (CSR counts, a base64 `.npz`, or an h5ad upload) with one gene name per column and "
    "returns one array per requested layer, cells in request order; layers `0..L` (0 = input "
    "embedding, L = last block with its final norm), negative indices count from the end. "
    '`GET /models` lists what each model offers. Errors are `{"error": message, "detail": '
    "[{loc, msg, type}]}` naming the field and the fix. Full contract: docs/api.md."
)

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what is wrong and how to fix it"},
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}

# Every status but 200 that a route can answer, with the error body (docs/api.md)
EMBED_ERRORS = {
    "400": "a client mistake (field named in `detail[].loc`): malformed JSON or a wrong type, "
    "unknown model, pooling, option or layer, genes not matching the columns or not known to "
    "the model, malformed cells or upload",
    "405": "a method other than POST (header `Allow: POST`)",
    "413": "over a limit (cells, genes, tokens, body size, what an upload declares: see "
    "GET /info); send fewer cells per request",
    "415": "a content type other than application/json",
    "422": "too many (layers, pooling) sets in one request",
    "500": "a defect of the service, for this request alone (e.g. a non-finite embedding, "
    "which is never returned)",
}
AUTH_ERRORS = {
    "401": "missing or wrong bearer token (when the server requires one; header "
    "`WWW-Authenticate: Bearer`)",
    "429": "too many wrong tokens from this address; wait Retry-After seconds",
}
CONNECTION_ERRORS = {
    "408": "the request head, or the body, did not arrive in time (SCSTRATA_HEADER_TIMEOUT_S, "
    "SCSTRATA_READ_TIMEOUT_S)",
    "413": "a Content-Length over the body limit",
    "503": "busy: every connection of the worker has a request in flight at its cap; retry "
    "after Retry-After seconds",
}
BUSY = (
    "busy (the queued work at its bound, the request's deadline passed, out of accelerator "
    "memory after splitting, every connection busy) or the models still loading: retry after "
    "Retry-After seconds"
)


def _errors(texts: dict[str, str]) -> dict[str, Any]:
    return {
        code: {"description": text, "content": _json({"$ref": REF.format(model="Error")})}
        for code, text in sorted(texts.items())
    }


# A working example: filled in from the served models (example_item); this one is shown
# while they load.
PLACEHOLDER_ITEM: dict[str, Any] = {
    "model": "scf",
    "layers": [0, -1],
    "pooling": "official",
    "genes": ["TP53", "GAPDH", "ACTB"],
    "min_known_genes": 0,  # three genes: a subset, which real requests are refused for
    "cells": {"data": [5.0, 3.0, 2.0, 4.0], "indices": [0, 1, 1, 2], "indptr": [0, 2, 4],
              "shape": [2, 3]},
}  # fmt: skip


def example_item(card: ModelCard, genes: list[str]) -> dict[str, Any]:
    """Two cells over three of the model's own genes, its last layer and the input layer."""
    return {**PLACEHOLDER_ITEM, "model": card.name, "genes": list(genes[:3])}


def _components(*types: type[BaseModel], models: list[str] | None) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for kind in types:
        schema = kind.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[kind.__name__] = schema
    if models:  # a request for another model is valid JSON but never a valid request
        schemas["EmbedItem"]["properties"]["model"]["enum"] = models
    schemas["Error"] = ERROR_SCHEMA
    return schemas


def _json(schema: dict, example: Any = None) -> dict:
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"application/json": content}


def _get(summary: str, schema: dict, description: str = "", busy: str | None = None) -> dict:
    """A GET route behind auth; ``busy``: what its 503 means beyond the connection cap."""
    errors = {**CONNECTION_ERRORS, **AUTH_ERRORS}
    if busy:
        errors["503"] = f"{busy}, or every connection busy; retry after Retry-After seconds"
    return {
        "get": {
            "summary": summary,
            "description": description,
            "responses": {
                "200": {"description": "OK", "content": _json(schema)},
                **_errors(errors),
            },
        }
    }


def document(item: dict[str, Any] | None = None, models: list[str] | None = None) -> dict:
    """The OpenAPI 3.1 document; ``item`` is the example request item (a served model's),
    ``models`` the served models' names (what ``model`` may be)."""
    item = item or PLACEHOLDER_ITEM
    errors = _errors({**CONNECTION_ERRORS, **AUTH_ERRORS, **EMBED_ERRORS, "503": BUSY})
    embed = {
        "post": {
            "summary": "Embed cells: one array per requested layer",
            "description": (
                "One request item per call (`items` holds exactly one). `extra_outputs` asks "
                "for more (layers, pooling) sets from the same forward pass. With "
                '`"format": "npz"` and `Accept: application/x-npz` the reply body is a raw '
                "`.npz` (members `layer_<k>`, `extra<i>_layer_<k>`, `unmapped_genes`)."
            ),
            "requestBody": {
                "required": True,
                "content": _json({"$ref": REF.format(model="EmbedRequest")}, {"items": [item]}),
            },
            "responses": {
                "200": {
                    "description": "one result per item",
                    "content": {
                        **_json(
                            {"type": "array", "items": {"$ref": REF.format(model="EmbedResult")}}
                        ),
                        "application/x-npz": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                **errors,
            },
        }
    }
    free_form = {"type": "object"}
    text = {"text/plain": {"schema": {"type": "string"}}}
    # health routes need no token
    ok = {"200": {"description": "OK"}, **_errors(CONNECTION_ERRORS)}
    not_ready = "not ready: the models are loading or the queued work is at its bound"
    health = {
        "/livez": {"get": {"summary": "alive (answers while the models load)", "responses": ok}},
        "/healthz": {"get": {"summary": "alive", "responses": ok}},
        "/readyz": {
            "get": {
                "summary": "ready: every model loaded and the queue below its bound",
                "responses": {**ok, **_errors({"503": f"{not_ready}, or every connection busy"})},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "scstrata", "version": SERVICE_VERSION, "description": DESCRIPTION},
        "paths": {
            "/embed": embed,
            "/models": _get(
                "The served models' cards: layers, dims per pooling, gene id kind, digest",
                {"type": "array", "items": {"$ref": REF.format(model="ModelCard")}},
                busy="the models are still loading",
            ),
            "/info": _get(
                "Server version, device and dtype per model, limits, workers, queue, features",
                free_form,
            ),
            "/worker": _get("Which worker answered and on which device", free_form),
            **health,
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {"description": "OK", "content": text},
                        **_errors({**CONNECTION_ERRORS, **AUTH_ERRORS}),
                    },
                }
            },
        },
        "components": {"schemas": _components(EmbedRequest, EmbedResult, ModelCard, models=models)},
    }


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <title>scstrata API</title>
  <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css">
</head>
<body>
  <noscript>The API document: <a href="./docs.json">docs.json</a></noscript>
  <div id="swagger-ui"></div>
  <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
  <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
  <script src="./static_content/swagger-initializer.js" charset="UTF-8"></script>
</body>
</html>
"""
