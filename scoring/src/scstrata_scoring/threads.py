"""How many CPU threads scoring uses: ``SCSTRATA_THREADS``, else the CPUs it may run on.

The same variable as the service's. Applied to the BLAS/OpenMP pools numpy, scipy and
scikit-learn use (threadpoolctl) and to numba's pool (pynndescent, UMAP's connectivities).
On a shared host, more threads than the process's share of cores runs many times slower,
so the default is the process's affinity mask (what a container or ``taskset`` allows), not
the host's core count. Scoring never imports torch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

__all__ = ["THREADS_ENV", "apply_threads", "thread_count"]

THREADS_ENV = "SCSTRATA_THREADS"

logger = logging.getLogger(__name__)


def thread_count(environ: Mapping[str, str] = os.environ) -> int:
    """``SCSTRATA_THREADS`` (a whole number >= 1), else the CPUs this process may run on."""
    text = environ.get(THREADS_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{THREADS_ENV} must be a whole number >= 1, got {text!r}")
        return int(text)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def apply_threads(n: int | None = None) -> int:
    """Limit BLAS/OpenMP and numba to ``n`` threads (default :func:`thread_count`); returns n.

    numba cannot go above the pool it started with (``NUMBA_NUM_THREADS``), so it gets
    ``min(n, that)``.
    """
    import numba
    from threadpoolctl import threadpool_limits

    n = thread_count() if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    threadpool_limits(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    logger.info("CPU threads: %d (BLAS/OpenMP and numba)", n)
    return n
