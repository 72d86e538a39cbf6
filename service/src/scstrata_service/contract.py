"""What every model family implements, and what the service talks to (docs/architecture.md).

A family supplies three things, nothing else:

- a :class:`Tokenizer`: the model's own preprocessing, from a CSR count matrix to
  :class:`TokenizedCells` (the packed batch);
- a :class:`PackedEncoder`: modules only (input embedding, blocks, final norm or none, a
  pooler for the packed layout). The shared runtime (``runtime/forward.py``) runs them; no
  family writes a loop over its blocks, and no setting is ever written onto an encoder;
- a :class:`Family` entry point: ``load()`` (checkpoint -> :class:`ModelBackend`) and
  ``fabricate()`` (a small checkpoint in the published layout, random demo weights).

The engine and the HTTP edge see only :class:`ModelBackend` (one implementation for every
family: ``runtime/backend.py``). This module imports neither torch nor a family, so the
service's edge can read the types without loading a model stack.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    import torch

    from scstrata_service.layers import Readout
    from scstrata_service.runtime.attention import PackedLayout

# How many rows or names an error message lists before "…" (every family and the edge).
MAX_LISTED = 50


def listed(items: Sequence[object], limit: int = MAX_LISTED) -> str:
    """The first ``limit`` items, comma-separated, then "… (N in all)" when there are more."""
    more = f" … ({len(items)} in all)" if len(items) > limit else ""
    return ", ".join(map(str, items[:limit])) + more


class InputError(ValueError):
    """A client mistake in one request: the message names the field and the fix."""


class CheckpointError(ValueError):
    """A checkpoint (file, folder or setting) that cannot be served faithfully; the message
    names the file and what is wrong with it. Every family raises this one type."""


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
    final_norm: bool = Field(
        default=False,
        description="true when layer L includes a norm after the last block (option "
        "final_norm=false then gives block L without it); false: layer L is block L",
    )
    options: dict[str, str] = Field(default_factory=dict, description="family options and meaning")


@dataclass(kw_only=True)  # by name: the fields are all arrays, an order is easy to mix up
class TokenizedCells:
    """Cells as variable-length token sequences, packed end to end (no padding).

    Cell ``i`` owns tokens ``offsets[i]:offsets[i + 1]``. Every field means the same in every
    family:

    - ``token_ids``: per token, its row in the model's token embedding table (a gene of the
      vocabulary or one of the family's special tokens such as ``<cls>``), int64;
    - ``values``: per token, the scalar the model reads with it (an expression value, its bin,
      or a rank value; 0 or the family's pad value where a token carries none), float32;
    - ``offsets``: cell boundaries, int64, ``n_cells + 1`` entries from 0;
    - ``unmapped_genes``: request genes the model does not know (reported, never embedded).
    """

    token_ids: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    unmapped_genes: list[str] = field(default_factory=list)

    @staticmethod
    def from_cells(
        token_ids: Sequence[np.ndarray],
        values: Sequence[np.ndarray],
        unmapped_genes: Sequence[str] = (),
    ) -> TokenizedCells:
        """Cells given one by one (token ids and values per cell), packed end to end."""
        lengths = [len(ids) for ids in token_ids]
        return TokenizedCells(
            token_ids=np.concatenate([*token_ids, np.zeros(0, np.int64)]).astype(np.int64),
            values=np.concatenate([*values, np.zeros(0, np.float32)]).astype(np.float32),
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            unmapped_genes=list(unmapped_genes),
        )

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
        return TokenizedCells(
            token_ids=self.token_ids[token_index], values=self.values[token_index], offsets=offsets
        )

    @staticmethod
    def concat(parts: Sequence[TokenizedCells]) -> TokenizedCells:
        shifts = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)]).astype(
            np.int64
        )
        return TokenizedCells(
            token_ids=np.concatenate([p.token_ids for p in parts]),
            values=np.concatenate([p.values for p in parts]),
            offsets=offsets,
        )


# pooling name -> layer index -> array [n_cells, dim]
PooledLayers = dict[str, dict[int, np.ndarray]]


class FamilyOptions(BaseModel):
    """Request ``options`` of one family: a family subclasses this with its own fields.

    ``final_norm`` is common to every family (it is the runtime's, not the tokenizer's).
    """

    model_config = ConfigDict(extra="forbid")

    family_label: ClassVar[str] = "model"

    final_norm: bool = Field(
        default=True,
        description="false: layer L is the last block without the family's final norm (no "
        "change for a family without one); true: layer L as the official embedding",
    )

    @classmethod
    def parse(cls, options: Mapping[str, object]) -> FamilyOptions:
        """Validated options, or an :class:`InputError` naming each bad field."""
        try:
            return cls.model_validate(dict(options))
        except ValidationError as err:
            problems = "; ".join(
                f"options.{'.'.join(map(str, e['loc']))}: {e['msg']}".replace("Value error, ", "")
                for e in err.errors()
            )
            raise InputError(
                f"{problems} ({cls.family_label} options: {', '.join(cls.model_fields)})"
            ) from None

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Option name -> meaning, for the model card."""
        return {name: f.description or "" for name, f in cls.model_fields.items()}


class Tokenizer(Protocol):
    """A family's preprocessing: genes by name, counts in, packed tokens out."""

    options: type[FamilyOptions]
    map_genes: Callable[[Sequence[str]], tuple[np.ndarray, tuple[str, ...]]]  # gene_mapping.py

    def known_genes(self) -> list[str]:
        """The gene names the vocabulary maps (symbols or Ensembl ids, per the card)."""

    def check(self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping) -> None:
        """Raise :class:`InputError` for anything the model cannot embed (cheap; per request)."""

    def tokenize(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping
    ) -> TokenizedCells:
        """The model's own preprocessing: gene mapping, normalisation, value encoding, order."""


class Pooler(Protocol):
    """A family's poolings of one packed batch (built once per batch, for its layout)."""

    def __call__(self, poolings: Iterable[str], states: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{pooling: [cells, dim]}`` of token states ``[tokens, dim]`` of one layer."""


class PackedEncoder(Protocol):
    """A family's encoder as modules; ``runtime/forward.py`` runs them for every family.

    ``blocks[k - 1](x, layout, attention)`` is block ``k`` on packed ``[tokens, dim]`` states
    (every block of one model is of one class, so one compiled graph serves them all).
    """

    blocks: Sequence[torch.nn.Module]  # the model's L blocks, in order
    final_norm: torch.nn.Module | None

    def embed_inputs(
        self, token_ids: torch.Tensor, values: torch.Tensor, layout: PackedLayout
    ) -> torch.Tensor:
        """Layer 0, fp32 ``[tokens, dim]``, from the batch's fields (already on the device)."""

    def pooler(self, layout: PackedLayout) -> Pooler:
        """The poolings of this layout's cells."""


class Family(Protocol):
    """A family's package (``families/<name>/__init__.py``), as the families table loads it."""

    def load(self, name: str, path: Path, **settings: Any) -> ModelBackend:
        """The served model: its card, tokenizer and encoder, placed on the device."""

    def fabricate(
        self, folder: Path, *, hidden: int, n_layers: int, n_heads: int, seed: int
    ) -> Path:
        """A small checkpoint in the published layout, RANDOM DEMO WEIGHTS; the folder to
        serve."""


class ModelBackend(abc.ABC):
    """One loaded model, as the engine and the service see it."""

    card: ModelCard
    max_tokens: int | None = None  # tokens per forward pass (None: no budget)

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
    def parse_options(self, options: Mapping[str, object]) -> FamilyOptions:
        """A request's ``options`` as this family reads them (:class:`InputError` if bad)."""

    @abc.abstractmethod
    def read(self, cells: TokenizedCells, readout: Readout) -> PooledLayers:
        """One forward pass up to ``readout.last``, pooling every requested layer on the way
        (``readout`` is resolved against this model's card: layers.py)."""

    def embed(
        self,
        cells: TokenizedCells,
        layers: Iterable[int],
        poolings: Sequence[str],
        *,
        final_norm: bool = True,
    ) -> PooledLayers:
        """:meth:`read` for library callers: resolves ``layers`` and ``poolings`` first
        (raising ``ValueError`` for a layer out of range or an unknown pooling)."""
        from scstrata_service.layers import Readout

        return self.read(cells, Readout.resolve(self.card, list(layers), poolings, final_norm))
