"""Turn a dispatch of request items into pooled layers, one model at a time.

Items of concurrent requests arrive together (BentoML adaptive batching). Tokenization runs on
a small shared thread pool, off the event loop: the service submits each request's
tokenization as soon as the request is validated (:func:`tokenize_soon`), so it overlaps the
dispatch that has the accelerator; items without tokens are submitted here, per item (genes
differ between requests). For each model the items are packed into groups of at least one
token budget as their tokens become ready, so the accelerator starts on the first group while
later items are still being tokenized. Each group runs once up to the deepest layer any item
asked for; each item then gets back its own cells, layers and poolings, in its own order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from scstrata_service.contract import InputError, ModelBackend, PooledLayers, TokenizedCells
from scstrata_service.layers import Readout
from scstrata_service.metrics import observe_passes, record_request
from scstrata_service.runtime.batching import AcceleratorOutOfMemory
from scstrata_service.settings import SETTINGS

log = logging.getLogger(__name__)


@dataclass
class EmbedJob:
    backend: ModelBackend
    counts: sp.csr_matrix
    genes: Sequence[str]
    outputs: Sequence[tuple[str, Sequence[int]]]  # (pooling, layers) sets, one pass for all
    options: Mapping[str, object] = field(default_factory=dict)
    # the backend's tokens of ``counts``: done, on their way (tokenize_soon), or None (do it here)
    tokens: TokenizedCells | Future[TokenizedCells] | None = None
    # False once nobody waits for the result (client gone, deadline passed): no forward pass
    wanted: Callable[[], bool] = lambda: True


@dataclass
class JobResult:
    outputs: list[dict[int, np.ndarray]]  # per requested (pooling, layers) set: layer -> rows
    unmapped_genes: list[str]


@dataclass
class JobFailure:
    """Why one job has no result; the other jobs of its dispatch are not affected."""

    status: int  # the HTTP status its request gets
    message: str


# Dispatches in flight at once (dispatch.py) take the accelerator in turn, each for all of its
# passes: the next one waits ready while the previous one computes, and the previous one's
# replies are written while the next one computes.
_ACCELERATOR_TURN = threading.Lock()


def run_jobs(jobs: Sequence[EmbedJob]) -> list[JobResult | JobFailure]:
    """Results in job order; jobs for the same model share packed forward passes.

    A job that fails (its tokenizer, its forward pass, a non-finite embedding) gets a
    :class:`JobFailure` and the others their results: a group whose pass fails is run again
    one job at a time, to find the job that fails. Jobs that leave layer L's final norm out
    (option ``final_norm: false``) share passes of their own.
    """
    results: list[JobResult | JobFailure | None] = [None] * len(jobs)
    by_model: dict[tuple[int, bool], list[int]] = {}
    for i, job in enumerate(jobs):
        final_norm = job.backend.parse_options(job.options).final_norm
        by_model.setdefault((id(job.backend), final_norm), []).append(i)
    with _ACCELERATOR_TURN:
        for members in by_model.values():
            backend = jobs[members[0]].backend
            started = time.perf_counter()
            n_cells = _run_model_jobs(backend, jobs, members, results)
            record_request(backend.card.name, n_cells, time.perf_counter() - started)
    return results  # type: ignore[return-value]


def _run_model_jobs(
    backend: ModelBackend,
    jobs: Sequence[EmbedJob],
    members: list[int],
    results: list[JobResult | JobFailure | None],
) -> int:
    """Embed ``jobs[members]`` (all for ``backend``) into ``results``; return the cell count."""
    final_norm = backend.parse_options(jobs[members[0]].options).final_norm
    readout = Readout.merge(
        Readout(tuple(ks), (p,), final_norm) for i in members for p, ks in jobs[i].outputs
    )
    failures: dict[int, JobFailure] = {}
    n_cells = 0
    with observe_passes(backend.card.name):
        for group in tokenized_groups(backend, [jobs[i] for i in members], failures):
            for part, pooled in _forward(backend, group, readout):
                start = 0
                for position, tok in part:
                    job = jobs[members[position]]
                    if isinstance(pooled, JobFailure):
                        failures[position] = pooled
                        continue
                    result = job_result(job, tok, pooled, start)
                    start += tok.n_cells
                    if isinstance(result, JobFailure):
                        failures[position] = result
                    else:
                        results[members[position]] = result
                        n_cells += tok.n_cells
    for position, failure in failures.items():
        results[members[position]] = failure
    return n_cells


def _forward(
    backend: ModelBackend,
    group: list[tuple[int, TokenizedCells]],
    readout: Readout,
) -> Iterator[tuple[list[tuple[int, TokenizedCells]], PooledLayers | JobFailure]]:
    """The group's pooled layers; if its pass fails, each job's own pass (or failure)."""
    try:
        tokens = TokenizedCells.concat([t for _, t in group])
        yield group, backend.read(tokens, readout)
        return
    except AcceleratorOutOfMemory as err:  # already split down to single cells
        yield group, JobFailure(503, f"busy: {err}")
        return
    except Exception:
        if len(group) == 1:
            log.exception("the forward pass of one request failed")
            yield group, JobFailure(500, "internal: the forward pass failed for this request")
            return
    for one in group:
        yield from _forward(backend, [one], readout)


def job_result(
    job: EmbedJob, tokens: TokenizedCells, pooled: PooledLayers, start: int
) -> JobResult | JobFailure:
    """The job's own rows (``start`` onwards in its group) of each output it asked for; a
    failure if any is NaN or infinite (never returned, docs/api.md)."""
    stop = start + tokens.n_cells
    outputs = [{k: pooled[p][k][start:stop] for k in ks} for p, ks in job.outputs]
    for (pooling, _), rows in zip(job.outputs, outputs):
        for k, array in rows.items():
            finite = np.isfinite(array).all(axis=1)
            if not finite.all():
                cells = np.flatnonzero(~finite)[:20].tolist()
                return JobFailure(
                    500,
                    f"internal: the model gave a non-finite embedding (NaN or infinity) at "
                    f"layer {k}, pooling {pooling!r}, for cells {cells} of this request; "
                    "nothing was returned",
                )
    return JobResult(outputs=outputs, unmapped_genes=tokens.unmapped_genes)


_TOKENIZER_POOL = ThreadPoolExecutor(
    SETTINGS.tokenize_threads, thread_name_prefix="scstrata-tokenize"
)


def tokenize_soon(
    backend: ModelBackend,
    counts: sp.csr_matrix,
    genes: Sequence[str],
    options: Mapping[str, object],
) -> Future[TokenizedCells]:
    """Start tokenizing on the shared pool and return at once. For input that passed
    ``backend.check_input``: a tokenizer error then is a defect, raised where the tokens are used.
    """
    return _TOKENIZER_POOL.submit(backend.tokenize, counts, genes, options)


def _pending_tokens(backend: ModelBackend, job: EmbedJob) -> Future[TokenizedCells]:
    if isinstance(job.tokens, Future):
        return job.tokens
    if job.tokens is not None:
        done: Future[TokenizedCells] = Future()
        done.set_result(job.tokens)
        return done
    return tokenize_soon(backend, job.counts, job.genes, job.options)


def tokenized_groups(
    backend: ModelBackend,
    jobs: Sequence[EmbedJob],
    failures: dict[int, JobFailure] | None = None,
) -> Iterator[list[tuple[int, TokenizedCells]]]:
    """``(position, tokens)`` of consecutive jobs, grouped once a group holds the backend's token
    budget (one group when it has none); jobs not yet tokenized are tokenized ahead, on the
    shared pool. Jobs no longer wanted, or whose tokenizer fails, go into ``failures``."""
    budget = getattr(backend, "max_tokens", None) or float("inf")
    futures = [_pending_tokens(backend, job) for job in jobs]
    failures = {} if failures is None else failures
    try:
        group: list[tuple[int, TokenizedCells]] = []
        size = 0
        for position, (job, future) in enumerate(zip(jobs, futures)):
            if not job.wanted():
                future.cancel()
                failures[position] = JobFailure(503, DROPPED)
                continue
            try:
                tokens = future.result()
            except InputError as err:
                failures[position] = JobFailure(400, str(err))
                continue
            except Exception:
                log.exception("tokenizing one request failed")
                failures[position] = JobFailure(500, "internal: tokenizing this request failed")
                continue
            group.append((position, tokens))
            size += int(tokens.offsets[-1])
            if size >= budget:
                yield group
                group, size = [], 0
        if group:
            yield group
    finally:
        for future in futures:  # a failed dispatch: tokens nobody will use
            future.cancel()


DROPPED = (
    "dropped: the request's deadline (SCSTRATA_REQUEST_TIMEOUT_S) passed, or its client left, "
    "before its forward pass"
)
