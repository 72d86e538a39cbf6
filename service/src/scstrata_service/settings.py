"""Service configuration in one place (environment variables, set by `scstrata serve`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scstrata_service.workers import WORKERS_ENV, parse_workers, visible_gpus

# The fewest of a model's genes a request carries by default (coverage.py): a 2,000-gene HVG
# subset is refused, full-transcriptome data holds tens of thousands
DEFAULT_MIN_KNOWN_GENES = 5000


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _tokenize_threads() -> int:
    """Up to 4 by default: tokenizers are numpy-bound and mostly release the GIL, and more
    threads than spare cores would only take time from the event loop."""
    return _int("SCSTRATA_TOKENIZE_THREADS", 0) or max(1, min(4, (os.cpu_count() or 2) - 1))


def _flag(name: str) -> bool | None:
    """1/true/yes or 0/false/no; unset or empty: None (the default for the device)."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"{name} must be 1 or 0, got {value!r}")


def _token() -> str | None:
    if os.environ.get("SCSTRATA_TOKEN"):
        return os.environ["SCSTRATA_TOKEN"]
    path = os.environ.get("SCSTRATA_TOKEN_FILE")
    if path:
        token = Path(path).read_text().strip()
        if not token:
            raise ValueError(f"SCSTRATA_TOKEN_FILE {path} is empty")
        return token
    return None


@dataclass(frozen=True)
class Settings:
    max_cells_per_request: int  # SCSTRATA_MAX_CELLS: cells per request, all items together
    max_tokens_per_request: int  # SCSTRATA_MAX_REQUEST_TOKENS: expressed genes summed, per request
    max_genes_per_request: int  # SCSTRATA_MAX_GENES
    max_outputs_per_request: int  # SCSTRATA_MAX_OUTPUTS: (layers, pooling) sets per request
    min_known_genes: int  # SCSTRATA_MIN_KNOWN_GENES: a request's default (coverage.py)
    max_body_bytes: int  # SCSTRATA_MAX_BODY_MB: request body size (and what uploads unpack to)
    max_queued_cells: int  # SCSTRATA_MAX_QUEUED_CELLS: admitted, unanswered cells; beyond: 503
    max_queued_tokens: int  # SCSTRATA_MAX_QUEUED_TOKENS: the same bound in tokens
    retry_after_s: int  # SCSTRATA_RETRY_AFTER_S: the Retry-After of a 503 (busy) or 429
    request_timeout_s: float  # SCSTRATA_REQUEST_TIMEOUT_S: no forward pass starts after this
    read_timeout_s: float  # SCSTRATA_READ_TIMEOUT_S: the longest wait for body bytes (408)
    header_timeout_s: float  # SCSTRATA_HEADER_TIMEOUT_S: the longest wait for a request head
    max_connections: int | None  # SCSTRATA_MAX_CONNECTIONS per worker (default: by file limit)
    backlog: int  # SCSTRATA_BACKLOG: connections the kernel queues for the workers to accept
    auth_failures_per_minute: int  # SCSTRATA_AUTH_FAILURES: wrong tokens per client, then 429
    admit_threads: int  # SCSTRATA_ADMIT_THREADS: request bodies parsed and checked at once
    parse_in_process_bytes: int  # bodies this large are parsed in a process of their own
    max_batch_items: int  # SCSTRATA_MAX_BATCH_ITEMS: requests merged into one dispatch
    dispatches: int  # SCSTRATA_DISPATCHES: dispatches in flight at once (BentoML alone: 1)
    max_latency_ms: int  # SCSTRATA_MAX_LATENCY_MS: BentoML sheds load (503) above this
    max_tokens: int | None  # SCSTRATA_MAX_TOKENS: tokens per forward pass (default: by device)
    device: str | None  # SCSTRATA_DEVICE: e.g. "cpu", "cuda:0" (default: CUDA when present)
    attention: str | None  # SCSTRATA_ATTENTION: per_cell | nested | varlen | cudnn (by device)
    compile_blocks: bool | None  # SCSTRATA_COMPILE=1|0: blocks under torch.compile (by device)
    tokenize_threads: int  # SCSTRATA_TOKENIZE_THREADS: requests tokenized at once, off the loop
    token: str | None  # SCSTRATA_TOKEN or the file SCSTRATA_TOKEN_FILE: bearer auth when set
    gpus: int  # NVIDIA GPUs the server uses: those visible (CUDA_VISIBLE_DEVICES), 0 on cpu
    workers: int  # SCSTRATA_WORKERS: worker processes, or auto (default): one per GPU, else 1

    @classmethod
    def from_env(cls) -> Settings:
        device = os.environ.get("SCSTRATA_DEVICE") or None
        # GPUs the server uses: none when it is told to run on the CPU
        gpus = 0 if device is not None and device.startswith("cpu") else visible_gpus()
        return cls(
            max_cells_per_request=_int("SCSTRATA_MAX_CELLS", 20_000),
            max_tokens_per_request=_int("SCSTRATA_MAX_REQUEST_TOKENS", 20_000_000),
            max_genes_per_request=_int("SCSTRATA_MAX_GENES", 100_000),
            max_outputs_per_request=_int("SCSTRATA_MAX_OUTPUTS", 8),
            # a targeted or spatial panel (a few hundred genes) needs it lowered
            min_known_genes=_int("SCSTRATA_MIN_KNOWN_GENES", DEFAULT_MIN_KNOWN_GENES),
            # 32 MiB: a 256-cell chunk (the client's default) of 5,000 expressed genes per cell
            # is ~15 MB as JSON lists, ~14 MB as cells_npz (512 MiB bodies cost 14 GiB before)
            max_body_bytes=_int("SCSTRATA_MAX_BODY_MB", 32) * 1024 * 1024,
            max_queued_cells=_int("SCSTRATA_MAX_QUEUED_CELLS", 100_000),
            max_queued_tokens=_int("SCSTRATA_MAX_QUEUED_TOKENS", 80_000_000),
            retry_after_s=_int("SCSTRATA_RETRY_AFTER_S", 5),
            request_timeout_s=float(os.environ.get("SCSTRATA_REQUEST_TIMEOUT_S", 600)),
            read_timeout_s=float(os.environ.get("SCSTRATA_READ_TIMEOUT_S", 30)),
            header_timeout_s=float(os.environ.get("SCSTRATA_HEADER_TIMEOUT_S", 10)),
            max_connections=_int("SCSTRATA_MAX_CONNECTIONS", 0) or None,
            backlog=_int("SCSTRATA_BACKLOG", 256),
            auth_failures_per_minute=_int("SCSTRATA_AUTH_FAILURES", 10),
            admit_threads=_int("SCSTRATA_ADMIT_THREADS", 4),
            parse_in_process_bytes=_int("SCSTRATA_PARSE_APART_KB", 1024) * 1024,
            max_batch_items=_int("SCSTRATA_MAX_BATCH_ITEMS", 64),
            dispatches=_int("SCSTRATA_DISPATCHES", 2),
            max_latency_ms=_int("SCSTRATA_MAX_LATENCY_MS", 600_000),
            max_tokens=_int("SCSTRATA_MAX_TOKENS", 0) or None,
            device=device,
            attention=os.environ.get("SCSTRATA_ATTENTION") or None,
            compile_blocks=_flag("SCSTRATA_COMPILE"),
            tokenize_threads=_tokenize_threads(),
            token=_token(),
            gpus=gpus,
            workers=parse_workers(os.environ.get(WORKERS_ENV), gpus),
        )

    def backend_settings(self, device: str | None = None) -> dict:
        """Keywords for the backends' loaders; ``device`` (this worker's) overrides
        SCSTRATA_DEVICE."""
        return {
            "device": device or self.device,
            "max_tokens": self.max_tokens,
            "attention": self.attention,
            "compile_blocks": self.compile_blocks,
        }


SETTINGS = Settings.from_env()
