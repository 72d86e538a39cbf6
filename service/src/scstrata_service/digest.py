"""Checkpoint digests shown on model cards (and keying the client's cache)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def files_digest(paths: Iterable[Path]) -> str:
    """``sha256:<hex>`` over the files' bytes, in order, read in 4 MiB blocks.

    For one file this is its plain sha256, which for a Hugging Face file equals its LFS id.
    """
    sha = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                sha.update(block)
    return "sha256:" + sha.hexdigest()
