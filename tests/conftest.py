"""Shared fixtures: a tiny scFoundation checkpoint in the official layout, and cells."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for helpers and the reference modules

# Tests never touch the user's client cache, and never inherit a token from the shell
# (the server and the client both read SCSTRATA_TOKEN).
os.environ["SCSTRATA_CACHE_DIR"] = tempfile.mkdtemp(prefix="scstrata-test-cache-")
os.environ.pop("SCSTRATA_TOKEN", None)
# The tests' cells hold random subsets of 5 to 2,000 of the model's genes, where real data holds
# tens of thousands: the servers they start take any subset, as a server for a targeted panel
# would. The default (5,000, which refuses an HVG subset) is tested in test_first_hour_genes.py.
os.environ["SCSTRATA_MIN_KNOWN_GENES"] = "0"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from scstrata_service.families.scfoundation.fabricate import fabricate_checkpoint

    return fabricate_checkpoint(tmp_path_factory.mktemp("scf"), hidden=32, n_layers=3, n_heads=4)


@pytest.fixture(scope="session")
def vocabulary(tiny_checkpoint) -> list[str]:
    from scstrata_service.families.scfoundation.checkpoint import load_vocabulary

    return load_vocabulary(tiny_checkpoint)


@pytest.fixture(scope="session")
def service_url(tiny_checkpoint) -> str:
    """One real server for the session, serving the tiny checkpoint as 'scf'."""
    from scstrata_service.launcher import running_service

    with running_service([f"scf=scfoundation:{tiny_checkpoint.parent}"]) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_backend(tiny_checkpoint):
    from scstrata_service.families import scfoundation

    return scfoundation.load("scf", tiny_checkpoint)
