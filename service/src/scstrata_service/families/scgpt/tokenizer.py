"""scGPT's cell-embedding preprocessing over a CSR matrix (docs/models.md, "scGPT").

Per cell, as the official ``embed_data`` path (its dataset, then its collator) does:

1. raw counts, no normalisation or log; genes matched to the vocabulary by exact,
   case-sensitive symbol (the others are reported as unmapped), zero counts dropped; the
   expressed genes stay in the request's column order after a ``<cls>`` token whose value
   is ``pad_value``;
2. the cell's values, as float32, are binned against their own quantiles,
   ``np.quantile(values, linspace(0, 1, 50))`` (the collator's fixed 51 bins, whatever
   ``n_bins`` args.json records): a value strictly between edges gets the number of edges
   at or below it, so bins run 1..50;
3. a value equal to one or more edges could take any bin from (edges below it) + 1 to
   (edges at or below it); upstream draws one uniformly from an unseeded generator, so the
   same cell gets other bins on every call. Here (option ``ties``): ``random`` draws from the
   same uniform distribution with a generator seeded by ``seed`` and the cell's own genes
   and values (same cell, same bins, whatever the batch or column order; over many cells
   the bins follow the official distribution), ``middle`` takes the middle bin of the range
   (the lower one of two), no randomness at all;
4. binning comes before sampling, as upstream; a cell with more genes than
   ``max_length - 1`` keeps ``max_length - 1`` of them: upstream a fresh random subset on
   every call, here (option ``subsample``) a subset drawn from the same seeded generator, or
   the most expressed genes (ties: lower token id first). The subset keeps column order
   (upstream also shuffles it, which cannot change a model without positional encoding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from scstrata_service.cell_sampling import cell_generator, random_subset, top_expressed
from scstrata_service.contract import FamilyOptions, InputError, TokenizedCells
from scstrata_service.gene_mapping import (
    GeneColumns,
    expressed,
    require_expressed,
    require_known_genes,
)

# the official embedding call's default sequence length (= the whole-human max_seq_len)
DEFAULT_MAX_LENGTH = 1200
# np.quantile grades of the collator's fixed 51 bins: 50 edges, bins 1..50
GRADES = np.linspace(0, 1, 50)


class ScGPTOptions(FamilyOptions):
    family_label = "scGPT"

    max_length: int = Field(
        default=DEFAULT_MAX_LENGTH,
        ge=2,
        description="tokens per cell including <cls> (default 1200, the official embedding call's)",
    )
    subsample: Literal["random", "top"] = Field(
        default="random",
        description="cells with more than max_length - 1 genes: 'random' = a random subset as "
        "upstream, but drawn from a generator seeded by `seed` and the cell's own genes and "
        "values (same cell, same subset, whatever the batch or column order); 'top' = the "
        "most expressed genes (ties: lower token id first)",
    )
    ties: Literal["random", "middle"] = Field(
        default="random",
        description="a value equal to repeated quantile edges (common with raw counts): "
        "'random' = a bin drawn as upstream from the range it may take, seeded like "
        "`subsample`; 'middle' = the middle bin of that range",
    )
    seed: int = Field(default=0, ge=0, description="seed of the 'random' subsample and ties")


def quantile_bins(values: np.ndarray, ties: str, draws: np.ndarray | None = None) -> np.ndarray:
    """Bins 1..50 of one cell's non-zero float32 values against their own quantiles.

    ``draws`` (uniform in [0, 1), one per value) pick the bin of a value tied with edges
    under ``ties="random"``; ``ties="middle"`` needs none."""
    edges = np.quantile(values, GRADES)
    at_or_below = np.digitize(values, edges)  # edges <= value
    below = np.digitize(values, edges, right=True)  # edges < value
    spread = at_or_below - below  # edges equal to the value: that many bins to choose from
    if ties == "middle":
        return at_or_below - spread // 2
    if draws is None:
        raise ValueError("ties='random' needs one uniform draw per value")
    # uniform over below+1 .. at_or_below, the distribution of upstream's draw
    return at_or_below - np.floor(draws * spread).astype(np.int64)


class ScGPTTokenizer:
    """contract.Tokenizer; token ids are vocabulary ids, ``<cls>`` first in every cell."""

    options = ScGPTOptions

    def __init__(self, vocabulary: Mapping[str, int], pad_value: float):
        # the special tokens (<pad>, <cls>, <eoc>, any <…>) are not genes a request may name
        self.index = {
            tok: i
            for tok, i in vocabulary.items()
            if not (tok.startswith("<") and tok.endswith(">"))
        }
        self.cls_id = int(vocabulary["<cls>"])
        self.pad_value = pad_value
        self.map_genes = GeneColumns(lambda gene: self.index.get(gene, -1))

    @property
    def n_genes(self) -> int:
        return len(self.index)

    def known_genes(self) -> list[str]:
        return list(self.index)

    def check(self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping) -> None:
        ScGPTOptions.parse(options)
        columns, _ = self.map_genes(genes)

        def fix() -> str:
            ensembl = sum(str(g).upper().startswith("ENS") for g in genes) * 2 > len(genes)
            hint = " (these look like Ensembl ids: map them to symbols first)" if ensembl else ""
            return f"send symbols such as {sorted(self.index)[:3]}{hint}"

        where = f"this scGPT model's vocabulary of {self.n_genes:,} gene symbols"
        require_known_genes(genes, columns, f"{where} (matched exactly, case-sensitive)", fix)
        require_expressed(counts, columns, "scGPT")

    def cell_tokens(
        self, ids: np.ndarray, raw: np.ndarray, opts: ScGPTOptions
    ) -> tuple[np.ndarray, np.ndarray]:
        """One cell's gene ids and bins, after binning, tie-breaking and any subsample."""
        n_keep = opts.max_length - 1
        rng = canonical = None
        if opts.ties == "random" or (opts.subsample == "random" and len(ids) > n_keep):
            canonical = np.lexsort((raw, ids))  # by token id (then value): column order free
            rng = cell_generator(opts.seed, ids[canonical], raw[canonical])
        draws = None
        if opts.ties == "random":
            draws = np.empty(len(ids))
            draws[canonical] = rng.random(len(ids))
        bins = quantile_bins(raw, opts.ties, draws).astype(np.float32)
        if len(ids) > n_keep:
            if opts.subsample == "top":
                picked = top_expressed(ids, raw, n_keep)
            else:
                picked = random_subset(rng, canonical, n_keep)
            ids, bins = ids[picked], bins[picked]
        return ids, bins

    def tokenize(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping
    ) -> TokenizedCells:
        opts = ScGPTOptions.parse(options)
        columns, unmapped = self.map_genes(genes)
        offsets, ids, raw = expressed(counts, columns, positive_only=False)
        cell_ids, cell_values = [], []
        for row, (s, e) in enumerate(pairwise(offsets)):
            if e == s:
                raise InputError(f"cells: a cell expresses none of the model's genes (row {row})")
            kept, bins = self.cell_tokens(ids[s:e], raw[s:e], opts)
            cell_ids.append(np.concatenate([[self.cls_id], kept]))
            cell_values.append(np.concatenate([[self.pad_value], bins]))
        return TokenizedCells.from_cells(cell_ids, cell_values, unmapped)
