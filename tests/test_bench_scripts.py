"""Every bench/ script still starts: its imports resolve and its arguments parse.

The benchmarks are not run in the test suite (they measure; tests assert), so a module moved
in service/ could break one unnoticed until someone needed its figures: bench/distributed.py
imported a backend class that no longer existed for a whole session.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "common.py")  # common: a library


def test_every_bench_script_is_listed():
    assert len(SCRIPTS) >= 9, [p.name for p in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_starts(script: Path):
    run = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout
