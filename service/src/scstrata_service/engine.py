"""Turn a dispatch of request items into pooled layers: one forward pass per model.

Items of concurrent requests arrive together (BentoML adaptive batching). For each model,
their cells are tokenized per item (genes differ between requests), packed together, and
run once up to the deepest layer any item asked for; each item then gets back its own cells,
layers and poolings, in its own order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from scstrata_service.backend import ModelBackend, TokenizedCells
from scstrata_service.metrics import observe_passes, record_request


@dataclass
class EmbedJob:
    backend: ModelBackend
    counts: sp.csr_matrix
    genes: Sequence[str]
    outputs: Sequence[tuple[str, Sequence[int]]]  # (pooling, layers) sets, one pass for all
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass
class JobResult:
    outputs: list[dict[int, np.ndarray]]  # per requested (pooling, layers) set: layer -> rows
    unmapped_genes: list[str]


def run_jobs(jobs: Sequence[EmbedJob]) -> list[JobResult]:
    """Results in job order; jobs for the same model share one packed forward pass."""
    results: list[JobResult | None] = [None] * len(jobs)
    by_model: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        by_model.setdefault(id(job.backend), []).append(i)
    for members in by_model.values():
        backend = jobs[members[0]].backend
        tokens = [backend.tokenize(jobs[i].counts, jobs[i].genes, jobs[i].options) for i in members]
        wanted = [out for i in members for out in jobs[i].outputs]
        layers = sorted({k for _, ks in wanted for k in ks})
        poolings = sorted({p for p, _ in wanted})
        started = time.perf_counter()
        with observe_passes(backend.card.name):
            pooled = backend.embed(TokenizedCells.concat(tokens), layers, poolings)
        record_request(
            backend.card.name, sum(t.n_cells for t in tokens), time.perf_counter() - started
        )
        start = 0
        for i, tok in zip(members, tokens):
            stop = start + tok.n_cells
            results[i] = JobResult(
                outputs=[{k: pooled[p][k][start:stop] for k in ks} for p, ks in jobs[i].outputs],
                unmapped_genes=tok.unmapped_genes,
            )
            start = stop
    return results  # type: ignore[return-value]
