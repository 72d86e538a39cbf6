"""The interface every model family implements (docs/design.md §3).

A backend = loader + tokenizer + encoder. The service, the engine and the tests talk to
backends only through :class:`ModelBackend`, so a family's internals stay in its folder.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field


class ModelCard(BaseModel):
    """What a client needs to know about a served model."""

    name: str
    family: str
    n_layers: int = Field(description="transformer blocks L; layers are 0..L")
    hidden_size: int
    poolings: dict[str, int] = Field(description="pooling name -> embedding dim")
    default_pooling: str = "official"
    gene_id_kind: str = Field(description="'symbol' or 'ensembl'")
    vocab_size: int
    checkpoint_digest: str
    demo_weights: bool = Field(
        default=False, description="true when the weights are random demo weights, not a release"
    )
    options: dict[str, str] = Field(default_factory=dict, description="family options and meaning")


class InputError(ValueError):
    """A client mistake in one request: the message names the field and the fix."""


@dataclass
class TokenizedCells:
    """Cells as variable-length token sequences, packed end to end (no padding).

    Cell ``i`` owns tokens ``offsets[i]:offsets[i + 1]``; ``values`` and ``positions`` are
    the family's per-token inputs (expression value and gene/position id).
    """

    values: np.ndarray
    positions: np.ndarray
    offsets: np.ndarray
    unmapped_genes: list[str] = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def select(self, cells: np.ndarray) -> TokenizedCells:
        """The packed sub-batch of the given cells, in the given order."""
        starts, ends = self.offsets[cells], self.offsets[cells + 1]
        token_index = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
        offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        return TokenizedCells(self.values[token_index], self.positions[token_index], offsets)

    @staticmethod
    def concat(parts: Sequence[TokenizedCells]) -> TokenizedCells:
        shifts = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)]).astype(
            np.int64
        )
        return TokenizedCells(
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.positions for p in parts]),
            offsets,
        )


# pooling name -> layer index -> array [n_cells, dim]
PooledLayers = dict[str, dict[int, np.ndarray]]


class ModelBackend(abc.ABC):
    """One loaded model: its card, its own preprocessing and its encoder."""

    card: ModelCard

    def warm_up(self) -> None:
        """Anything worth doing once before the first request (nothing by default)."""
        return None

    @abc.abstractmethod
    def known_genes(self) -> list[str]:
        """The gene names the model's vocabulary maps (symbols or Ensembl ids, per card)."""

    def gene_columns(self, genes: Sequence[str]) -> np.ndarray:
        """The model's gene index per name, -1 where it has none (coverage.py)."""
        index = {gene: i for i, gene in enumerate(self.known_genes())}
        return np.array([index.get(gene, -1) for gene in genes], dtype=np.int64)

    @abc.abstractmethod
    def check_input(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping[str, object]
    ) -> None:
        """Raise :class:`InputError` for anything the model cannot embed (cheap; per request)."""

    @abc.abstractmethod
    def tokenize(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping[str, object]
    ) -> TokenizedCells:
        """The model's own preprocessing: gene mapping, normalisation, value encoding, order."""

    @abc.abstractmethod
    def embed(
        self, cells: TokenizedCells, layers: Sequence[int], poolings: Sequence[str]
    ) -> PooledLayers:
        """One forward pass up to ``max(layers)``, pooling every requested layer on the way."""
