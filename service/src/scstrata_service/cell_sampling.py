"""Deterministic choices for tokenizers whose official code draws at random on every call
(scGPT, Tahoe-X1): which genes a cell too long for the model keeps, and the generator behind
any such draw.

The generator is keyed by a seed and the cell's own (token id, value) pairs, so the same cell
gets the same draws whatever the batch it comes in or the order of the request's columns.
"""

from __future__ import annotations

import hashlib

import numpy as np


def cell_generator(seed: int, ids: np.ndarray, values: np.ndarray) -> np.random.Generator:
    """A generator keyed by ``seed`` and a cell's ids and values, given in the family's
    canonical order (one that does not depend on the column order)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(np.int64(seed).tobytes())
    digest.update(ids.astype(np.int64).tobytes())
    digest.update(values.astype(np.float32).tobytes())
    return np.random.default_rng(int.from_bytes(digest.digest(), "little"))


def top_expressed(ids: np.ndarray, values: np.ndarray, n_keep: int) -> np.ndarray:
    """Positions (ascending) of the ``n_keep`` largest values; ties: the lower token id."""
    return np.sort(np.lexsort((ids, -values.astype(np.float64)))[:n_keep])


def random_subset(rng: np.random.Generator, canonical: np.ndarray, n_keep: int) -> np.ndarray:
    """Positions (ascending) of ``n_keep`` genes drawn without replacement, drawn over the
    canonical order so that the column order cannot change the draw."""
    return np.sort(canonical[rng.choice(len(canonical), n_keep, replace=False)])
