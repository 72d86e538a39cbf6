"""Token-budget batching: cells grouped into forward passes of at most ``max_tokens`` tokens,
longest first, the next pass gathered while one runs, and a pass that runs out of accelerator
memory split in two and retried (all families)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar

import numpy as np
import torch

from scstrata_service.contract import PooledLayers, TokenizedCells

log = logging.getLogger(__name__)


class AcceleratorOutOfMemory(RuntimeError):
    """Even a single cell does not fit on the accelerator."""


def plan_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Group cells, longest first, into batches of at most ``max_tokens`` tokens.

    A cell longer than the budget gets a batch of its own. Sorting by length keeps cells of
    similar cost together, which matters for the padded fallback and for load balance.
    """
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start, tokens = 0, 0
    for pos, cell in enumerate(order):
        n = int(lengths[cell])
        if pos > start and tokens + n > max_tokens:
            batches.append(order[start:pos])
            start, tokens = pos, 0
        tokens += n
    if len(order) > start:
        batches.append(order[start:])
    return batches


ForwardFn = Callable[[TokenizedCells], PooledLayers]

# Called after each forward pass with (cells, tokens, padded token slots); set by the service
# to feed its metrics. A context variable keeps concurrent dispatches apart.
pass_observer: ContextVar[Callable[[int, int, int], None] | None] = ContextVar(
    "pass_observer", default=None
)


def embed_in_batches(cells: TokenizedCells, max_tokens: int, forward: ForwardFn) -> PooledLayers:
    """Run ``forward`` over token-budget batches and put the pooled rows back in cell order.

    The next batch is gathered on a helper thread while the current one runs, so the host-side
    work overlaps the accelerator's (a prefetch queue of one).
    """
    results: PooledLayers = {}
    batches = plan_batches(cells.lengths, max_tokens)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scstrata-prefetch") as pool:
        upcoming = pool.submit(cells.select, batches[0]) if batches else None
        for i, batch in enumerate(batches):
            selected = upcoming.result()
            if i + 1 < len(batches):
                upcoming = pool.submit(cells.select, batches[i + 1])
            pooled = _forward_splitting_on_oom(cells, batch, forward, selected)
            for pooling, per_layer in pooled.items():
                out = results.setdefault(pooling, {})
                for layer, rows in per_layer.items():
                    if layer not in out:
                        out[layer] = np.empty((cells.n_cells, rows.shape[1]), dtype=np.float32)
                    out[layer][batch] = rows
    return results


def _forward_splitting_on_oom(
    cells: TokenizedCells,
    batch: np.ndarray,
    forward: ForwardFn,
    selected: TokenizedCells | None = None,
) -> PooledLayers:
    try:
        pooled = forward(selected if selected is not None else cells.select(batch))
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        if len(batch) == 1:
            raise AcceleratorOutOfMemory(
                f"one cell of {int(cells.lengths[batch[0]])} tokens does not fit in "
                "accelerator memory; retry later or lower the service's max tokens per pass"
            ) from None
        log.warning("out of memory on %d cells; splitting the batch and retrying", len(batch))
        half = len(batch) // 2
        first = _forward_splitting_on_oom(cells, batch[:half], forward)
        second = _forward_splitting_on_oom(cells, batch[half:], forward)
        return {
            p: {k: np.concatenate([first[p][k], second[p][k]]) for k in first[p]} for p in first
        }
    observer = pass_observer.get()
    if observer is not None:
        tokens = int(cells.lengths[batch].sum())
        observer(len(batch), tokens, tokens)  # packed: every slot is a real token
    return pooled
