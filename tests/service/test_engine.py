"""The engine: items of one dispatch share packed passes, tokenized ahead of the accelerator."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from scstrata_service.engine import EmbedJob, run_jobs, tokenize_soon, tokenized_groups
from scstrata_service.families import scfoundation

from helpers import make_cells


def jobs_for(backend, vocabulary, sizes, seed=0):
    jobs = []
    for i, n in enumerate(sizes):
        counts, genes = make_cells(vocabulary, n_cells=n, n_genes=300, seed=seed + i)
        jobs.append(EmbedJob(backend, counts, genes, [("S", [1, 3]), ("mean", [2])]))
    return jobs


def test_groups_hold_a_token_budget_and_keep_job_order(tiny_checkpoint, vocabulary):
    backend = scfoundation.load("scf", tiny_checkpoint, max_tokens=1500)
    jobs = jobs_for(backend, vocabulary, [5, 9, 2, 7, 4, 6])
    groups = list(tokenized_groups(backend, jobs))
    positions = [p for group in groups for p, _ in group]
    assert positions == list(range(len(jobs)))
    assert len(groups) > 1
    for group in groups[:-1]:  # every group but the last reaches the budget
        assert sum(int(t.offsets[-1]) for _, t in group) >= 1500


def test_grouped_dispatch_equals_each_job_alone(tiny_checkpoint, vocabulary):
    small = scfoundation.load("scf", tiny_checkpoint, max_tokens=1500)
    jobs = jobs_for(small, vocabulary, [5, 9, 2, 7, 4, 6], seed=20)
    together = run_jobs(jobs)
    for job, result in zip(jobs, together):
        (alone,) = run_jobs([job])
        assert len(result.outputs) == 2
        for got, want in zip(result.outputs, alone.outputs):
            assert sorted(got) == sorted(want)
            for k in want:
                assert got[k].shape == (job.counts.shape[0], want[k].shape[1])
                np.testing.assert_allclose(got[k], want[k], atol=1e-5)
        assert result.unmapped_genes == alone.unmapped_genes == ["NOT_A_GENE", "ALSO_NOT"]


def test_jobs_tokenized_at_validation_are_not_tokenized_again(tiny_checkpoint, vocabulary):
    backend = scfoundation.load("scf", tiny_checkpoint, max_tokens=1500)
    jobs = jobs_for(backend, vocabulary, [4, 6, 3], seed=40)
    want = run_jobs(jobs)
    for job in jobs:
        job.tokens = backend.tokenize(job.counts, job.genes, job.options)

    def refuse(*args):
        raise AssertionError("tokenized twice")

    backend.tokenize = refuse
    got = run_jobs(jobs)
    for a, b in zip(got, want):
        for x, y in zip(a.outputs, b.outputs):
            for k in y:
                np.testing.assert_allclose(x[k], y[k], atol=1e-6)


def test_tokens_still_on_their_way_are_awaited_not_redone(tiny_checkpoint, vocabulary):
    backend = scfoundation.load("scf", tiny_checkpoint, max_tokens=1500)
    jobs = jobs_for(backend, vocabulary, [4, 6, 3], seed=60)
    want = run_jobs(jobs)
    tokenized_on = []
    tokenize = backend.tokenize

    def record_thread(*args):
        tokenized_on.append(threading.current_thread().name)
        return tokenize(*args)

    backend.tokenize = record_thread
    for job in jobs:
        job.tokens = tokenize_soon(backend, job.counts, job.genes, job.options)
    backend.tokenize = lambda *args: pytest.fail("tokenized twice")
    got = run_jobs(jobs)
    assert len(tokenized_on) == len(jobs)
    assert all(name.startswith("scstrata-tokenize") for name in tokenized_on)
    for a, b in zip(got, want):
        for x, y in zip(a.outputs, b.outputs):
            for k in y:
                np.testing.assert_allclose(x[k], y[k], atol=1e-6)
