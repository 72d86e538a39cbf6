"""``GET /info``: what this server is and offers, so clients and operators need not guess.

Versions, this worker's placement, each model's device and compute dtype, the request limits,
the queue, and the request features this version accepts (a client reads ``features`` rather
than probing with requests and matching error texts).
"""

from __future__ import annotations

import dataclasses
from importlib import metadata

from scstrata_service.settings import SETTINGS, Settings

# What a request may use, named as in docs/api.md
FEATURES = (
    "json",
    "npz",
    "raw_npz_reply",
    "cells_npz",
    "h5ad",
    "extra_outputs",
    "min_mapped_fraction",
    "min_known_genes",
)
# Settings a client or operator plans with (never the token)
LIMITS = (
    "max_cells_per_request",
    "max_tokens_per_request",
    "max_genes_per_request",
    "max_outputs_per_request",
    "min_known_genes",
    "max_body_bytes",
    "max_queued_cells",
    "max_queued_tokens",
    "max_batch_items",
    "request_timeout_s",
    "retry_after_s",
)


def version(package: str = "scstrata-service") -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:  # run from a source tree without an install
        return "unknown"


SERVICE_VERSION = version()


def limits(settings: Settings = SETTINGS) -> dict:
    values = dataclasses.asdict(settings)
    return {name: values[name] for name in LIMITS if name in values}


def server_info(registry: object | None, placement: dict | None, backlog: object) -> dict:
    """The /info body; ``registry`` is None while the models load."""
    import bentoml
    import torch

    models = []
    for name, backend in (getattr(registry, "backends", None) or {}).items():
        # packed backends carry their placement in a DevicePolicy (runtime/device.py)
        policy = getattr(backend, "policy", None)
        dtype = getattr(policy, "compute_dtype", None)
        models.append(
            {
                "name": name,
                "family": backend.card.family,
                "device": str(getattr(backend, "device", "")),
                "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
                "max_tokens_per_pass": getattr(backend, "max_tokens", None),
                "attention": getattr(policy, "attention", None),
            }
        )
    return {
        "service": "scstrata",
        "version": SERVICE_VERSION,
        "versions": {"bentoml": bentoml.__version__, "torch": torch.__version__},
        "loading": registry is None,
        "worker": placement or {},
        "workers": SETTINGS.workers,
        "dispatches": SETTINGS.dispatches,
        "models": models,
        "limits": limits(),
        "queue": {"cells": backlog.cells, "tokens": backlog.tokens},
        "features": list(FEATURES),
    }
