"""One ``embed`` call, independent of how its HTTP requests are sent.

``EmbedJob`` plans the chunks, builds each chunk's body and puts each chunk's reply in
place. Chunks may be accepted in any order (an async client sends them concurrently);
the result is always in input row order, and it is only returned once every chunk has
come back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from ._inputs import as_csr, chunk_ranges
from ._protocol import ChunkResult, build_item, normalise_layers, parse_embed_reply, request_body
from .exceptions import ProtocolError


@dataclass
class EmbedJob:
    cells: sp.csr_matrix
    genes: list[str]
    model: str
    layers: int | list[int] | Literal["all"]
    pooling: str
    options: dict[str, Any]
    ranges: list[tuple[int, int]]
    n_unmapped_genes: int | None = None
    unmapped_genes: list[str] = field(default_factory=list)
    _out: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _done: set[int] = field(default_factory=set, repr=False)

    @classmethod
    def plan(
        cls,
        X: Any,
        genes: Sequence[str] | None,
        *,
        model: str,
        layers: Any,
        pooling: str,
        options: Mapping[str, Any] | None,
        chunk_size: int,
    ) -> EmbedJob:
        """Validate every argument locally, so that mistakes fail before any request."""
        if not isinstance(model, str) or not model:
            raise ValueError(f"model: expected a model name (see Client.models()), got {model!r}")
        if not isinstance(pooling, str) or not pooling:
            raise ValueError(f"pooling: expected a pooling name, got {pooling!r}")
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"options: expected a dict, got {type(options).__name__}")
        cells, gene_list = as_csr(X, genes)
        return cls(
            cells=cells,
            genes=gene_list,
            model=model,
            layers=normalise_layers(layers),
            pooling=pooling,
            options=dict(options or {}),
            ranges=chunk_ranges(cells.shape[0], chunk_size),
        )

    @property
    def n_cells(self) -> int:
        return int(self.cells.shape[0])

    def body(self, i: int) -> dict[str, Any]:
        """The JSON body of chunk ``i``."""
        start, stop = self.ranges[i]
        item = build_item(
            self.cells[start:stop],
            self.genes,
            model=self.model,
            layers=self.layers,
            pooling=self.pooling,
            options=self.options,
        )
        return request_body(item)

    def accept(self, i: int, payload: Any) -> ChunkResult:
        """Parse the reply to chunk ``i`` and copy its rows into place."""
        start, stop = self.ranges[i]
        chunk = parse_embed_reply(payload, stop - start)
        if not self._out:
            # The first reply fixes the layer set and dimension that every other must match.
            self._out = {
                k: np.empty((self.n_cells, a.shape[1]), dtype=np.float32)
                for k, a in chunk.layers.items()
            }
        elif set(chunk.layers) != set(self._out):
            raise ProtocolError(
                f"chunk {i} returned layers {sorted(chunk.layers)}, "
                f"earlier chunks returned {sorted(self._out)}"
            )
        for k, array in chunk.layers.items():
            if array.shape[1] != self._out[k].shape[1]:
                raise ProtocolError(
                    f"chunk {i}, layer {k}: dim {array.shape[1]} differs from earlier chunks "
                    f"({self._out[k].shape[1]})"
                )
            self._out[k][start:stop] = array
        self._done.add(i)
        if self.n_unmapped_genes is None:
            # Every chunk sends the same genes, so the first reply's report holds for all.
            self.n_unmapped_genes = chunk.n_unmapped_genes
            self.unmapped_genes = chunk.unmapped_genes
        return chunk

    def result(self) -> dict[int, np.ndarray]:
        """Every layer with all cells in input order; raises if a chunk is missing."""
        missing = sorted(set(range(len(self.ranges))) - self._done)
        if missing:
            raise RuntimeError(f"chunks {missing} have no reply yet")
        return dict(sorted(self._out.items()))
