"""Load the models without blocking the server, and stop the whole server if they fail.

BentoML builds the service instance before its worker accepts a connection, and restarts a
worker whose start-up raised, forever (every 15-20 s, nothing listening). So the worker
starts listening at once (``/livez`` answers; ``/readyz``, ``/embed`` and ``/models`` say
503 until the models are in)
and loads in a thread; if loading fails it logs the error once, writes it where the server's
main process will find it, and stops that process, which then exits with status 1.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

FAILURE_ENV = "SCSTRATA_FAILURE_FILE"
DEBUG_ENV = "SCSTRATA_DEBUG"  # `scstrata serve --debug`
EXIT_CODE = 1
LOADING_MESSAGE = "the models are still loading; retry once GET /readyz answers 200"


def arm_main_process() -> None:
    """In the server's main process (``bentoml serve`` imports the service before it starts
    any worker): choose the file a failing worker writes to, and exit non-zero after the
    server stops if one was written. Workers inherit the variable and do nothing here; any
    other process chooses its own (a value inherited from a parent belongs to the parent)."""
    if in_bentoml_worker():
        return
    folder = tempfile.mkdtemp(prefix="scstrata-start-")
    path = Path(folder) / "failure.txt"
    os.environ[FAILURE_ENV] = str(path)
    atexit.register(_exit_if_failed, path)


def _exit_if_failed(path: Path) -> None:
    failed = path.is_file()
    message = path.read_text() if failed else ""
    shutil.rmtree(path.parent, ignore_errors=True)
    if failed:
        sys.stderr.write(f"scstrata: the server stopped because {message}\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)  # atexit cannot change the status any other way


class BackgroundLoad:
    """Run ``load`` in a daemon thread; ``ready`` once it returned, the server stopped if it
    raised."""

    def __init__(self, load: Callable[[], object]):
        self.result: object | None = None
        self.error: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(load,), daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._done.is_set() and self.error is None

    def _run(self, load: Callable[[], object]) -> None:
        try:
            self.result = load()
        except Exception as err:  # any failure to load ends the server, by design
            self.error = f"a model could not be loaded: {type(err).__name__}: {err}"
            # one line; the traceback with `scstrata serve --debug`
            log.error("scstrata: %s", self.error, exc_info=bool(os.environ.get(DEBUG_ENV)))
            self._done.set()
            stop_server(self.error)
            return
        self._done.set()


BENTOML_WORKER = "_bentoml_impl.worker.service"


def in_bentoml_worker() -> bool:
    main = sys.modules.get("__main__")
    return getattr(getattr(main, "__spec__", None), "name", None) == BENTOML_WORKER


def stop_server(message: str) -> None:
    """Record ``message`` for the main process and stop it (and so every worker).

    Only in a BentoML worker process, whose parent is the server's main process; in-process
    (a test's ASGI client) the error stays on ``/readyz`` (503) and in the log."""
    if not in_bentoml_worker():
        return
    path = os.environ.get(FAILURE_ENV)
    if path:
        Path(path).write_text(message)
    os.kill(os.getppid(), signal.SIGTERM)


def exit_with_parent(poll_s: float = 0.5, grace_s: float = 30.0) -> None:
    """In a BentoML worker: stop once the server's main process is gone.

    Killed with SIGKILL, the main process cannot stop its workers, and an orphaned worker would
    keep serving, and holding the port, with nothing to restart or stop it. The worker then
    shuts down as on SIGTERM (it stops listening and finishes the requests in flight) and exits
    after ``grace_s`` at the latest."""
    if not in_bentoml_worker():
        return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.error("scstrata: the server's main process %d is gone; this worker stops", parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(EXIT_CODE)

    threading.Thread(target=watch, name="scstrata-parent-watch", daemon=True).start()
