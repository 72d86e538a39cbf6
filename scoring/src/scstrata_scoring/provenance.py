"""Provenance of a scoring run: which data, model, pooling, layers, recipe, versions and seeds.

The report ends with this block so that a score can be traced to what produced it, and a
rerun can be checked against it.
"""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

__all__ = ["PACKAGES", "file_digest", "package_versions"]

#: The packages whose versions change scores: ours, and what the metrics are computed with.
PACKAGES = ("scstrata-scoring", "scstrata-client", "scanpy", "anndata", "numpy", "scipy")


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """``sha256:<hex>`` of the file's bytes (read in 1 MiB pieces, so any size fits)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` (``"not installed"`` for a missing one) and Python."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
