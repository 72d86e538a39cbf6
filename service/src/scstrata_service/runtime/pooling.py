"""Pooling over packed cells: index vectors of a layout's tokens, and per-cell reductions.

A family's pooler (contract.Pooler) is built from these; every index is computed once per
batch, with host-side sizes so that no index op waits on the device.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from scstrata_service.runtime.attention import PackedLayout


def cell_of_tokens(layout: PackedLayout) -> torch.Tensor:
    """The cell index of every token of the batch."""
    cells = torch.arange(layout.n_cells, device=layout.offsets.device)
    return torch.repeat_interleave(cells, torch.diff(layout.offsets), output_size=layout.bounds[-1])


class GeneTokens:
    """The gene tokens of a layout whose cells have ``head`` special tokens before their genes
    and ``tail`` after them: their positions (``index``) and cells (``cell``), in token order."""

    def __init__(self, layout: PackedLayout, head: int = 0, tail: int = 0):
        offsets = layout.offsets
        self.n_cells = layout.n_cells
        special = head + tail
        n_genes = layout.bounds[-1] - special * self.n_cells
        cells = torch.arange(self.n_cells, device=offsets.device)
        self.cell = torch.repeat_interleave(
            cells, torch.diff(offsets) - special, output_size=n_genes
        )
        # the g-th gene token of the batch sits after its cell's head tokens and after the
        # special tokens of every cell before it
        self.index = torch.arange(n_genes, device=offsets.device) + special * self.cell + head

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return segment_mean(x[self.index], self.cell, self.n_cells)

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return segment_max(x[self.index], self.cell, self.n_cells)


def segment_mean(x: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Mean of the rows of ``x`` per segment id (every segment must have a row)."""
    total = torch.zeros(n_segments, x.shape[1], dtype=torch.float32, device=x.device)
    total.index_add_(0, segment, x.float())
    count = torch.bincount(segment, minlength=n_segments).clamp_min(1)
    return total / count.unsqueeze(1)


def segment_max(x: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Max of the rows of ``x`` per segment id (every segment must have a row)."""
    out = torch.full((n_segments, x.shape[1]), -torch.inf, dtype=torch.float32, device=x.device)
    index = segment.unsqueeze(1).expand(-1, x.shape[1])
    return out.scatter_reduce_(0, index, x.float(), reduce="amax", include_self=True)


class ClsFirstPooler:
    """The poolings of cells whose first token is ``<cls>`` (scGPT, Tahoe-X1): ``cls`` = its
    raw state, ``mean`` = the mean of the gene tokens, ``official`` = the official embedding:
    the ``<cls>`` state (``official="cls"``) or the mean of every token, ``<cls>`` included
    (``official="avg-pool"``), then L2-normalised as the official extractors do."""

    def __init__(self, layout: PackedLayout, official: str):
        self.official = official
        self.n_cells = layout.n_cells
        self.cls_index = layout.offsets[:-1]
        self.layout = layout
        self.genes = GeneTokens(layout, head=1)

    def one(self, pooling: str, x: torch.Tensor) -> torch.Tensor:
        if pooling == "cls":
            return x[self.cls_index].float()
        if pooling == "mean":
            return self.genes.mean(x)
        if self.official == "cls":
            cell = x[self.cls_index].float()
        else:
            cell = segment_mean(x, cell_of_tokens(self.layout), self.n_cells)
        return F.normalize(cell, dim=1)

    def __call__(self, poolings: Iterable[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {p: self.one(p, x) for p in poolings}
