"""Several service URLs behind one client: which replica takes the next request, which are out.

Pure bookkeeping, shared by the sync and async clients (each sends its own probes):

- ``acquire`` picks the healthy replica with the fewest requests outstanding (ties: the one
  listed first). When every replica is out, it hands out the one whose probe is due first, so
  that the request itself is the probe and the run fails only when the retries are spent.
- ``failed`` takes a replica out after a retryable failure (connection refused, timeout, 503),
  while another one is healthy: its chunk goes to another replica at once.
- ``due_probe`` names an out replica whose health check (``GET /readyz``, else ``/livez``) is
  due; ``probed`` brings it back in, or puts the next check further off (doubling, up to
  ``MAX_PROBE_INTERVAL_S``).

With one URL none of this changes anything: that replica is never taken out, and its failures
are retried with backoff as before.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pydantic

FIRST_PROBE_INTERVAL_S = 1.0
MAX_PROBE_INTERVAL_S = 30.0
HEALTH_PATHS = ("/readyz", "/livez")
# A health check must answer quickly; a replica that does not stays out a while longer.
PROBE_TIMEOUT_S = 5.0


@dataclass
class Replica:
    url: str
    http: Any
    """This replica's ``httpx.Client`` or ``httpx.AsyncClient``."""
    in_flight: int = 0
    healthy: bool = True
    probe_at: float = 0.0
    probe_interval: float = FIRST_PROBE_INTERVAL_S
    probing: bool = False
    chunks: int = 0
    cells: int = 0
    failures: int = 0
    busy_s: float = 0.0
    taken_out: int = 0
    verified: bool = False
    """Its ``GET /models`` matched the other replicas' (so its results may be mixed in)."""


class ReplicaReport(pydantic.BaseModel):
    url: str
    chunks: int
    cells: int
    failures: int
    taken_out: int
    """Times the replica was taken out after a failure."""
    cells_per_s: float
    """Cells it embedded per second of the run's wall time."""


class RunReport(pydantic.BaseModel):
    """What one ``embed`` sent where (``client.last_run``)."""

    cells: int
    """Cells embedded by this run (not those the cache or store already held)."""
    wall_s: float
    replicas: list[ReplicaReport]

    def summary(self) -> str:
        lines = [f"{self.cells} cells in {self.wall_s:.1f} s"]
        for r in self.replicas:
            lines.append(
                f"  {r.url}: {r.cells} cells in {r.chunks} chunks, {r.cells_per_s:.1f} cells/s"
                + (f", {r.failures} failed requests, out {r.taken_out}x" if r.failures else "")
            )
        return "\n".join(lines)


@dataclass
class ReplicaSet:
    replicas: list[Replica]
    first_probe_interval: float = FIRST_PROBE_INTERVAL_S
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _started: float = field(default_factory=time.perf_counter, repr=False)

    def __len__(self) -> int:
        return len(self.replicas)

    @property
    def primary(self) -> Replica:
        return self.replicas[0]

    def acquire(self) -> Replica:
        """The replica for the next request; counts it as outstanding until ``release``."""
        with self._lock:
            healthy = [r for r in self.replicas if r.healthy]
            pool = healthy or sorted(self.replicas, key=lambda r: r.probe_at)[:1]
            best = min(pool, key=lambda r: r.in_flight)
            best.in_flight += 1
            return best

    def release(self, replica: Replica, *, cells: int = 0, seconds: float = 0.0) -> None:
        """A request to ``replica`` ended; ``cells`` > 0 when it embedded that many."""
        with self._lock:
            replica.in_flight -= 1
            replica.busy_s += seconds
            if cells:
                replica.chunks += 1
                replica.cells += cells
                self._back_in(replica)  # an answer is the best health check

    def failed(self, replica: Replica) -> bool:
        """Record a retryable failure; True if another healthy replica can take the retry."""
        with self._lock:
            replica.failures += 1
            others = [r for r in self.replicas if r is not replica and r.healthy]
            if not others:
                return False  # the only one (left): keep it, retry it with backoff
            if replica.healthy:
                replica.healthy = False
                replica.taken_out += 1
                replica.probe_interval = self.first_probe_interval
                replica.probe_at = time.monotonic() + replica.probe_interval
            return True

    def due_probe(self) -> Replica | None:
        """An out replica whose health check is due (claimed: no other caller probes it)."""
        now = time.monotonic()
        with self._lock:
            for r in self.replicas:
                if not r.healthy and not r.probing and r.probe_at <= now:
                    r.probing = True
                    return r
        return None

    def probed(self, replica: Replica, ok: bool) -> None:
        with self._lock:
            replica.probing = False
            if ok:
                self._back_in(replica)
            else:
                replica.probe_interval = min(MAX_PROBE_INTERVAL_S, replica.probe_interval * 2)
                replica.probe_at = time.monotonic() + replica.probe_interval

    @staticmethod
    def _back_in(replica: Replica) -> None:
        replica.healthy = True
        replica.probe_interval = FIRST_PROBE_INTERVAL_S

    def start_run(self) -> tuple[float, dict[str, tuple[int, int, int, int]]]:
        """A mark to report one run from (the counters are the client's lifetime totals)."""
        with self._lock:
            counts = {r.url: (r.chunks, r.cells, r.failures, r.taken_out) for r in self.replicas}
        return time.perf_counter(), counts

    def report(self, mark: tuple[float, dict[str, tuple[int, int, int, int]]]) -> RunReport:
        started, before = mark
        wall = max(time.perf_counter() - started, 1e-9)
        rows = []
        with self._lock:
            for r in self.replicas:
                chunks0, cells0, failures0, out0 = before.get(r.url, (0, 0, 0, 0))
                cells = r.cells - cells0
                rows.append(
                    ReplicaReport(
                        url=r.url,
                        chunks=r.chunks - chunks0,
                        cells=cells,
                        failures=r.failures - failures0,
                        taken_out=r.taken_out - out0,
                        cells_per_s=cells / wall,
                    )
                )
        return RunReport(cells=sum(r.cells for r in rows), wall_s=wall, replicas=rows)


def parse_urls(url: str | Any) -> list[str]:
    """One URL, a comma-separated string of them, or a sequence; each without a trailing /."""
    if isinstance(url, str):
        urls = [u.strip() for u in url.split(",")]
    else:
        urls = [str(u).strip() for u in url]
    urls = [u.rstrip("/") for u in urls if u]
    if not urls:
        raise ValueError("url: expected the service's base URL, e.g. http://localhost:3000")
    if len(set(urls)) != len(urls):
        raise ValueError(f"url: a replica is listed twice in {urls}")
    return urls
