"""Inside a dispatch, whatever still fails fails only its own item (engine.py), and nothing
non-finite is ever returned; the admission backlog is bounded."""

from __future__ import annotations

import numpy as np
import pytest

from scstrata_service.admission import Backlog
from scstrata_service.engine import EmbedJob, JobFailure, JobResult, run_jobs
from scstrata_service.families import scfoundation
from scstrata_service.schemas import Refused

from helpers import make_cells


@pytest.fixture
def backend(tiny_checkpoint):
    return scfoundation.load("scf", tiny_checkpoint, max_tokens=100_000)


def jobs_for(backend, vocabulary, n_jobs, seed=0):
    jobs = []
    for i in range(n_jobs):
        counts, genes = make_cells(vocabulary, n_cells=3, n_genes=200, seed=seed + i)
        jobs.append(EmbedJob(backend, counts, genes, [("S", [1, 3])]))
    return jobs


def assert_same(result, alone):
    assert isinstance(result, JobResult)
    for k, rows in alone.outputs[0].items():
        np.testing.assert_allclose(result.outputs[0][k], rows, atol=1e-5)


def test_a_tokenizer_failure_fails_its_own_job_only(backend, vocabulary):
    jobs = jobs_for(backend, vocabulary, 5, seed=1)
    alone = [run_jobs([job])[0] for job in jobs]
    tokenize = backend.tokenize
    bad = jobs[2].counts

    def failing(counts, genes, options):
        if counts is bad:
            raise OverflowError("Python int too large to convert to C long")
        return tokenize(counts, genes, options)

    backend.tokenize = failing
    results = run_jobs(jobs)
    assert isinstance(results[2], JobFailure) and results[2].status == 500
    for i in (0, 1, 3, 4):
        assert_same(results[i], alone[i])


def test_a_forward_pass_failure_is_isolated_to_its_job(backend, vocabulary):
    jobs = jobs_for(backend, vocabulary, 4, seed=10)
    alone = [run_jobs([job])[0] for job in jobs]
    bad_tokens = backend.tokenize(jobs[1].counts, jobs[1].genes, {})
    read = backend.read

    def failing(tokens, readout):
        # the bad job's cells are recognised by their token count, in a group or alone
        if tokens.n_cells == 3 and int(tokens.offsets[-1]) == int(bad_tokens.offsets[-1]):
            raise RuntimeError("a kernel failed")
        if tokens.n_cells > 3:
            raise RuntimeError("a kernel failed in the merged group")
        return read(tokens, readout)

    backend.read = failing
    results = run_jobs(jobs)
    assert isinstance(results[1], JobFailure) and results[1].status == 500
    for i in (0, 2, 3):
        assert_same(results[i], alone[i])


def test_a_non_finite_embedding_is_never_returned(backend, vocabulary):
    jobs = jobs_for(backend, vocabulary, 3, seed=20)
    read = backend.read

    def with_nan(tokens, readout):
        pooled = read(tokens, readout)
        pooled["S"][3][4] = np.nan  # the second cell of the second job
        return pooled

    backend.read = with_nan
    results = run_jobs(jobs)
    failure = results[1]
    assert isinstance(failure, JobFailure) and failure.status == 500
    assert "non-finite" in failure.message and "[1]" in failure.message
    assert all(isinstance(results[i], JobResult) for i in (0, 2))


def test_a_job_nobody_waits_for_gets_no_forward_pass(backend, vocabulary):
    jobs = jobs_for(backend, vocabulary, 3, seed=30)
    jobs[0].wanted = lambda: False
    passes = []
    read = backend.read

    def counting(tokens, readout):
        passes.append(tokens.n_cells)
        return read(tokens, readout)

    backend.read = counting
    results = run_jobs(jobs)
    assert isinstance(results[0], JobFailure) and results[0].status == 503
    assert sum(passes) == 6  # the two wanted jobs' cells only
    assert all(isinstance(r, JobResult) for r in results[1:])


def test_the_backlog_refuses_past_its_bound_with_retry_after():
    backlog = Backlog(max_cells=10, max_tokens=1000)
    backlog.reserve(50, 50_000)  # one request alone always fits, however large
    backlog.release(50, 50_000)
    backlog.reserve(6, 100)
    with pytest.raises(Refused) as refused:
        backlog.reserve(6, 100)
    assert refused.value.status == 503 and "retry-after" in refused.value.headers
    backlog.reserve(4, 100)
    assert backlog.full
    backlog.release(10, 200)
    assert not backlog.full and backlog.cells == backlog.tokens == 0
