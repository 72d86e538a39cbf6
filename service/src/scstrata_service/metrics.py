"""Prometheus metrics beyond BentoML's own, exposed on the service's /metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import bentoml

from scstrata_service.runtime import batching
from scstrata_service.workers import worker_index

# Counters are summed over BentoML's workers unless a label tells them apart: cells carry the
# worker, so /metrics shows each worker's (and so each GPU's) throughput.
CELLS = bentoml.metrics.Counter(
    name="scstrata_cells_embedded", documentation="cells embedded", labelnames=["model", "worker"]
)
WORKER = bentoml.metrics.Gauge(
    name="scstrata_worker",
    documentation="1 for each live service worker, labelled with its index and device",
    labelnames=["worker", "device"],
    multiprocess_mode="liveall",  # a worker that exits leaves the list
)
# The queue: what admission holds (admitted, not yet answered), summed over live workers
QUEUED_CELLS = bentoml.metrics.Gauge(
    name="scstrata_queued_cells",
    documentation="cells admitted and not yet answered (waiting for or in a forward pass)",
    multiprocess_mode="livesum",
)
QUEUED_TOKENS = bentoml.metrics.Gauge(
    name="scstrata_queued_tokens",
    documentation="tokens of the queued cells (the backlog bound is on both)",
    multiprocess_mode="livesum",
)
PASSES = bentoml.metrics.Counter(
    name="scstrata_forward_passes", documentation="encoder forward passes", labelnames=["model"]
)
PASS_CELLS = bentoml.metrics.Histogram(
    name="scstrata_cells_per_pass",
    documentation="cells packed into one forward pass",
    labelnames=["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384),
)
PASS_TOKENS = bentoml.metrics.Histogram(
    name="scstrata_tokens_per_pass",
    documentation="tokens in one forward pass (the token budget caps it)",
    labelnames=["model"],
    buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
)
PADDING = bentoml.metrics.Histogram(
    name="scstrata_padding_fraction",
    documentation="share of computed token slots that were padding (0 on the packed path)",
    labelnames=["model"],
    buckets=(0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0),
)
LATENCY = bentoml.metrics.Histogram(
    name="scstrata_embed_seconds",
    documentation="seconds to embed one dispatch of requests, per model",
    labelnames=["model"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)


@contextlib.contextmanager
def observe_passes(model: str) -> Iterator[None]:
    """Count every forward pass the backend runs inside this block, labelled by model."""

    def record(n_cells: int, n_tokens: int, padded_slots: int) -> None:
        PASSES.labels(model=model).inc()
        PASS_CELLS.labels(model=model).observe(n_cells)
        PASS_TOKENS.labels(model=model).observe(n_tokens)
        PADDING.labels(model=model).observe(1 - n_tokens / max(padded_slots, 1))

    token = batching.pass_observer.set(record)
    try:
        yield
    finally:
        batching.pass_observer.reset(token)


def record_worker(worker: int, device: str) -> None:
    WORKER.labels(worker=str(worker), device=device).set(1)


def record_backlog(cells: int, tokens: int) -> None:
    QUEUED_CELLS.set(cells)
    QUEUED_TOKENS.set(tokens)


def record_request(model: str, n_cells: int, seconds: float) -> None:
    CELLS.labels(model=model, worker=str(worker_index())).inc(n_cells)
    LATENCY.labels(model=model).observe(seconds)
