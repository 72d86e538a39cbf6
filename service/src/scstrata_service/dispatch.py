"""Let BentoML start the next dispatch of /embed while the previous one is still running.

BentoML's batching dispatcher (``CorkDispatcher``, bentoml 1.4.40) runs one dispatch at a time:
it holds a semaphore of 1 from the moment it hands a batch to the service until the batch's
replies are ready. Between two dispatches the accelerator then waits for host work: the replies
of the batch that just finished go out, its clients send their next chunks, those are parsed
and validated. When a dispatch takes every request in flight, nothing is left queued to fill
that gap (bench/http_overhead.py measured 0.86-0.88 of the accelerator's rate kept).

With two dispatches in flight the next batch is formed, handed over and waiting for the
accelerator (engine.py hands it over in dispatch order) while the previous one still computes,
and the previous one's replies go out while the next one computes. The dispatcher takes the
semaphore as a constructor argument (``shared_sema``) that BentoML's server never passes; this
module passes it, by giving BentoML's server module a dispatcher class with that default.
It relies on the server module's name for the class (bentoml is pinned in service/pyproject.toml);
if that name is gone, BentoML's one-at-a-time dispatching is kept and a warning logged, and
tests/service/test_dispatch.py fails.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def allow_overlapping_dispatches(in_flight: int) -> bool:
    """Make every batchable API's dispatcher run up to ``in_flight`` dispatches at once.

    Call before the service's ASGI app is built (at import of the service module). Returns
    whether it took effect; 1 leaves BentoML's behaviour alone.
    """
    if in_flight < 1:
        raise ValueError(f"SCSTRATA_DISPATCHES must be at least 1, got {in_flight}")
    if in_flight == 1:
        return False
    try:
        from _bentoml_impl.server import app as server_app
        from bentoml._internal.marshal.dispatcher import CorkDispatcher, NonBlockSema
    except ImportError as err:
        log.warning("BentoML internals moved (%s): dispatches run one at a time", err)
        return False
    if not isinstance(getattr(server_app, "CorkDispatcher", None), type):
        log.warning("BentoML's server builds no CorkDispatcher: dispatches run one at a time")
        return False

    class OverlappingDispatcher(CorkDispatcher):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("shared_sema", NonBlockSema(in_flight))
            super().__init__(*args, **kwargs)

    server_app.CorkDispatcher = OverlappingDispatcher
    return True
