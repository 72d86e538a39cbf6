"""SCSTRATA_THREADS: the service's CPU threads (torch and BLAS), default its CPU affinity."""

from __future__ import annotations

import os

import pytest
import torch
from threadpoolctl import threadpool_info

from scstrata_service.runtime.device import apply_threads, thread_count


def test_the_default_is_the_cpus_this_process_may_use():
    assert thread_count({}) == len(os.sched_getaffinity(0))
    assert thread_count({"SCSTRATA_THREADS": "3"}) == 3
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="SCSTRATA_THREADS must be a whole number"):
            thread_count({"SCSTRATA_THREADS": bad})


def test_apply_threads_sets_torch_and_blas():
    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    finally:
        apply_threads(before)
