"""Tahoe-X1's own preprocessing over a CSR matrix (docs/models.md, "Tahoe-X1").

Per cell, as the official dataset + collator do at inference: the expressed genes (value > 0)
that are in the vocabulary, in the request's column order, after a ``<cls>`` token whose value
is ``pad_value``. The values after the first ``keep_first_n_tokens`` tokens are binned per
cell (``do_binning``: quantile bin edges of the cell's values, ``bucketize``, +1 for
left-sided bins, so 1..num_bins-1), or log-normalised (``log_transform``), or left as they
are. A cell with more tokens than ``max_length`` keeps its first ``keep_first_n_tokens``
tokens and a subset of the rest; the official collator draws that subset at random on every
call, this service chooses it deterministically (options ``subsample`` and ``seed``).
Binning is done before the subset is chosen, as upstream. Bin edges come from torch's own
float32 ``quantile`` (float64 edges would move values lying on an edge into the next bin),
and values are placed with ``searchsorted``, which makes the same float32 comparisons as
upstream's ``bucketize``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field

from scstrata_service.cell_sampling import cell_generator, random_subset, top_expressed
from scstrata_service.contract import FamilyOptions, InputError, TokenizedCells
from scstrata_service.families.tahoe.checkpoint import CollatorConfig
from scstrata_service.gene_mapping import (
    GeneColumns,
    expressed,
    require_expressed,
    require_known_genes,
)

ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*G\d+)\.\d+$")


class TahoeOptions(FamilyOptions):
    family_label = "Tahoe-X1"

    max_length: int | None = Field(
        default=None,
        ge=2,
        description="tokens per cell including <cls> (default: max_length of "
        "collator_config.yml, the training context)",
    )
    subsample: Literal["random", "top"] = Field(
        default="random",
        description="cells with more genes than max_length: 'random' = a random subset as "
        "upstream, but drawn from a generator seeded by `seed` and the cell's own genes and "
        "values (same cell, same subset, whatever the batch or column order); 'top' = the "
        "most expressed genes (ties: lower vocabulary index first)",
    )
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="seed of the 'random' subsample")


class TahoeTokenizer:
    """contract.Tokenizer; token ids are vocabulary ids, ``<cls>`` first in every cell."""

    options = TahoeOptions

    def __init__(self, vocabulary: Mapping[str, int], collator: CollatorConfig):
        # special tokens (<pad>, <cls>, <eoc>, <drug>) are not genes a request may name
        self.index = {tok: i for tok, i in vocabulary.items() if not tok.startswith("<")}
        self.cls_id = int(vocabulary["<cls>"])
        self.collator = collator
        self.grades = torch.linspace(0, 1, collator.num_bins - 1, dtype=torch.float32)
        # vocabulary index per input column (-1 = unknown), and the unknown names
        self.map_genes = GeneColumns(self.lookup)

    @property
    def n_genes(self) -> int:
        return len(self.index)

    def known_genes(self) -> list[str]:
        return list(self.index)

    def lookup(self, gene: str) -> int:
        """Vocabulary index of a gene id (-1 = unknown); 'ENSG….5' falls back to 'ENSG…'."""
        found = self.index.get(gene)
        if found is None:
            versioned = ENSEMBL_VERSION.match(gene)
            found = self.index.get(versioned.group(1)) if versioned else None
        return -1 if found is None else found

    def max_length(self, opts: TahoeOptions) -> int:
        keep = self.collator.keep_first_n_tokens
        if opts.max_length is not None and opts.max_length <= keep:
            raise InputError(
                f"options.max_length: must exceed keep_first_n_tokens ({keep}) of this model"
            )
        return opts.max_length or self.collator.max_length

    def check(self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping) -> None:
        self.max_length(TahoeOptions.parse(options))
        columns, _ = self.map_genes(genes)
        require_known_genes(
            genes,
            columns,
            f"this Tahoe-X1 model's vocabulary of {self.n_genes:,} genes",
            f"send its gene ids (e.g. {sorted(self.index)[:2]}; Ensembl ids for the releases), "
            "not gene symbols",
        )
        require_expressed(counts, columns, "Tahoe-X1")

    def encode_values(self, values: np.ndarray) -> np.ndarray:
        """The collator's value transform of one cell's (non-kept) expressed values."""
        c = self.collator
        if len(values) == 0 or not (c.do_binning or c.log_transform):
            return values
        row = torch.from_numpy(values)
        if c.do_binning:
            edges = torch.quantile(row, self.grades).numpy()
            # = torch.bucketize(row, edges, right=...) (same float32 comparisons), ~10x faster
            binned = np.searchsorted(edges, values, side="right" if c.right_binning else "left")
            return (binned if c.right_binning else binned + 1).astype(np.float32)
        scaled = row / (row.sum() + 1e-9) * c.target_sum
        return torch.log1p(scaled).numpy()

    def choose(
        self, ids: np.ndarray, raw: np.ndarray, n_keep: int, opts: TahoeOptions
    ) -> np.ndarray:
        """Positions (ascending) of ``n_keep`` of a cell's subsampled genes."""
        if opts.subsample == "top":
            return top_expressed(ids, raw, n_keep)
        canonical = np.argsort(ids, kind="stable")  # by vocabulary index
        rng = cell_generator(opts.seed, ids[canonical], raw[canonical])
        return random_subset(rng, canonical, n_keep)

    def tokenize(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping
    ) -> TokenizedCells:
        opts = TahoeOptions.parse(options)
        c = self.collator
        max_length = self.max_length(opts)
        fixed = c.keep_first_n_tokens - 1  # genes after <cls> left as they are (see docs)
        columns, unmapped = self.map_genes(genes)
        offsets, ids, raw = expressed(counts, columns, positive_only=True)
        cell_ids, cell_values = [], []
        for s, e in pairwise(offsets):
            kept, kept_raw = ids[s:e], raw[s:e]
            values = kept_raw.copy()
            values[fixed:] = self.encode_values(kept_raw[fixed:])
            if 1 + len(kept) > max_length:
                rest = fixed + self.choose(
                    kept[fixed:], kept_raw[fixed:], max_length - 1 - fixed, opts
                )
                picked = np.concatenate([np.arange(min(fixed, len(kept))), rest])
                kept, values = kept[picked], values[picked]
            cell_ids.append(np.concatenate([[self.cls_id], kept]))
            cell_values.append(np.concatenate([[c.pad_value], values]))
        return TokenizedCells.from_cells(cell_ids, cell_values, unmapped)
