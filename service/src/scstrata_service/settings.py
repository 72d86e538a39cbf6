"""Service configuration in one place (environment variables, set by `scstrata serve`)."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
    max_cells_per_request: int  # SCSTRATA_MAX_CELLS
    max_genes_per_request: int  # SCSTRATA_MAX_GENES
    max_batch_items: int  # SCSTRATA_MAX_BATCH_ITEMS: requests merged into one dispatch
    max_latency_ms: int  # SCSTRATA_MAX_LATENCY_MS: BentoML sheds load (503) above this
    max_tokens: int | None  # SCSTRATA_MAX_TOKENS: tokens per forward pass (default: by device)
    device: str | None  # SCSTRATA_DEVICE: e.g. "cpu", "cuda:0" (default: CUDA when present)
    attention: str | None  # SCSTRATA_ATTENTION: "nested" | "per_cell" (default: by device)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            max_cells_per_request=_int("SCSTRATA_MAX_CELLS", 20_000),
            max_genes_per_request=_int("SCSTRATA_MAX_GENES", 100_000),
            max_batch_items=_int("SCSTRATA_MAX_BATCH_ITEMS", 64),
            max_latency_ms=_int("SCSTRATA_MAX_LATENCY_MS", 600_000),
            max_tokens=_int("SCSTRATA_MAX_TOKENS", 0) or None,
            device=os.environ.get("SCSTRATA_DEVICE") or None,
            attention=os.environ.get("SCSTRATA_ATTENTION") or None,
        )

    def backend_settings(self) -> dict:
        return {"device": self.device, "max_tokens": self.max_tokens, "attention": self.attention}


SETTINGS = Settings.from_env()
