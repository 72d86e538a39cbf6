"""Turn a dispatch of request items into pooled layers, one model at a time.

Items of concurrent requests arrive together (BentoML adaptive batching). The service hands
over items already tokenized (each request is tokenized when it is validated, while the
previous dispatch runs); items without tokens are tokenized here, per item (genes differ
between requests) on a helper thread. For each model they are packed into groups of at least
one token budget as they become ready, so the accelerator starts on the first group while
later items are still being tokenized. Each group runs once up to the deepest layer any item
asked for; each item then gets back its own cells, layers and poolings, in its own order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from scstrata_service.backend import ModelBackend, PooledLayers, TokenizedCells
from scstrata_service.metrics import observe_passes, record_request


@dataclass
class EmbedJob:
    backend: ModelBackend
    counts: sp.csr_matrix
    genes: Sequence[str]
    outputs: Sequence[tuple[str, Sequence[int]]]  # (pooling, layers) sets, one pass for all
    options: Mapping[str, object] = field(default_factory=dict)
    tokens: TokenizedCells | None = None  # the backend's tokens of ``counts``, if done already


@dataclass
class JobResult:
    outputs: list[dict[int, np.ndarray]]  # per requested (pooling, layers) set: layer -> rows
    unmapped_genes: list[str]


def run_jobs(jobs: Sequence[EmbedJob]) -> list[JobResult]:
    """Results in job order; jobs for the same model share packed forward passes."""
    results: list[JobResult | None] = [None] * len(jobs)
    by_model: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        by_model.setdefault(id(job.backend), []).append(i)
    for members in by_model.values():
        backend = jobs[members[0]].backend
        wanted = [out for i in members for out in jobs[i].outputs]
        layers = sorted({k for _, ks in wanted for k in ks})
        poolings = sorted({p for p, _ in wanted})
        started, n_cells = time.perf_counter(), 0
        with observe_passes(backend.card.name):
            for group in tokenized_groups(backend, [jobs[i] for i in members]):
                tokens = TokenizedCells.concat([t for _, t in group])
                pooled = backend.embed(tokens, layers, poolings)
                start = 0
                for position, tok in group:
                    index = members[position]
                    results[index] = job_result(jobs[index], tok, pooled, start)
                    start += tok.n_cells
                n_cells += start
        record_request(backend.card.name, n_cells, time.perf_counter() - started)
    return results  # type: ignore[return-value]


def job_result(
    job: EmbedJob, tokens: TokenizedCells, pooled: PooledLayers, start: int
) -> JobResult:
    """The job's own rows (``start`` onwards in its group) of each output it asked for."""
    stop = start + tokens.n_cells
    return JobResult(
        outputs=[{k: pooled[p][k][start:stop] for k in ks} for p, ks in job.outputs],
        unmapped_genes=tokens.unmapped_genes,
    )


def _tokens_of(backend: ModelBackend, job: EmbedJob) -> TokenizedCells:
    if job.tokens is not None:
        return job.tokens
    return backend.tokenize(job.counts, job.genes, job.options)


def tokenized_groups(
    backend: ModelBackend, jobs: Sequence[EmbedJob]
) -> Iterator[list[tuple[int, TokenizedCells]]]:
    """``(position, tokens)`` of consecutive jobs, grouped once a group holds the backend's token
    budget (one group when it has none); jobs are tokenized ahead on a helper thread."""
    budget = getattr(backend, "max_tokens", None) or float("inf")
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scstrata-tokenize")
    try:
        futures = [pool.submit(_tokens_of, backend, job) for job in jobs]
        group: list[tuple[int, TokenizedCells]] = []
        size = 0
        for position, future in enumerate(futures):
            tokens = future.result()
            group.append((position, tokens))
            size += int(tokens.offsets[-1])
            if size >= budget:
                yield group
                group, size = [], 0
        if group:
            yield group
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
