"""Turn a dispatch of request items into pooled layers: one forward pass per model.

Items of concurrent requests arrive together (BentoML adaptive batching). For each model,
their cells are tokenized per item (genes differ between requests), packed together, and
run once up to the deepest layer any item asked for; each item then gets back its own cells,
layers and pooling, in its own order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from scstrata_service.backend import ModelBackend, TokenizedCells


@dataclass
class EmbedJob:
    backend: ModelBackend
    counts: sp.csr_matrix
    genes: Sequence[str]
    layers: Sequence[int]
    pooling: str
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass
class JobResult:
    layers: dict[int, np.ndarray]
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
        layers = sorted({k for i in members for k in jobs[i].layers})
        poolings = sorted({jobs[i].pooling for i in members})
        pooled = backend.embed(TokenizedCells.concat(tokens), layers, poolings)
        start = 0
        for i, tok in zip(members, tokens):
            stop = start + tok.n_cells
            job = jobs[i]
            results[i] = JobResult(
                layers={k: pooled[job.pooling][k][start:stop] for k in job.layers},
                unmapped_genes=tok.unmapped_genes,
            )
            start = stop
    return results  # type: ignore[return-value]
