"""Geneformer's rank-value encoding, vectorised over a CSR matrix (docs/models.md, Geneformer).

Per cell, as the official ``TranscriptomeTokenizer`` (collapse_gene_ids on, its default):

1. Map each column's Ensembl id, upper-cased, through the id mapping onto a dictionary gene;
   columns that land on the same gene are summed. Other columns are reported as unmapped.
2. ``v = x / n_counts * 10_000 / median`` with ``n_counts`` the cell's total over *all* the
   columns sent (the official reads it from ``obs['n_counts']``, the total of the whole
   transcriptome, not only of dictionary genes). ``n_counts`` is one factor per cell, so
   it never changes the order of step 3.
3. Order the genes with ``v > 0`` by ``v``, largest first. Ties (equal ``v``) go to the
   lower token id first: deterministic and independent of the column order (the official
   uses numpy's unstable ``argsort(-v)``, whose tie order is not defined).
4. Keep the first ``input_size`` tokens (V1); V2: the first ``input_size - 2``, then
   ``<cls>`` in front and ``<eos>`` at the end.

Packed output: ``token_ids`` holds the token ids (the model's input ids), ``values`` the
rank value ``v`` of each gene token (0 for ``<cls>``/``<eos>``; informational only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from scstrata_service.contract import FamilyOptions, InputError, TokenizedCells, listed
from scstrata_service.families.geneformer.checkpoint import GeneDictionaries
from scstrata_service.gene_mapping import (
    GeneColumns,
    require_expressed,
    require_known_genes,
    to_model_genes,
)

TARGET_SUM = 10_000.0


class GeneformerOptions(FamilyOptions):
    family_label = "Geneformer"

    allow_non_integer: bool = Field(
        default=False,
        description=(
            "false: cells must be raw counts (whole numbers); true: also accept depth-scaled "
            "counts such as CP10k (not log-transformed: ranks would change)"
        ),
    )


class GeneformerTokenizer:
    """contract.Tokenizer; token ids are the model's input ids (V2: ``<cls>``, genes, ``<eos>``)."""

    options = GeneformerOptions

    def __init__(self, dictionaries: GeneDictionaries, input_size: int):
        self.dictionaries = dictionaries
        self.version = dictionaries.version
        self.input_size = input_size
        self.cls_id, self.eos_id = dictionaries.cls_id, dictionaries.eos_id
        self.special = self.cls_id is not None
        # the gene budget of one cell: V2 keeps two places for <cls> and <eos>
        self.max_genes = input_size - 2 if self.special else input_size
        if self.max_genes < 1:
            raise ValueError(f"input size {input_size} leaves no room for genes")
        genes = sorted(dictionaries.gene_tokens, key=dictionaries.gene_tokens.__getitem__)
        self.genes = genes  # dictionary genes in token-id order
        self.gene_index = {gene: i for i, gene in enumerate(genes)}
        self.token_ids = np.array([dictionaries.gene_tokens[g] for g in genes], dtype=np.int64)
        self.medians = np.array([dictionaries.medians[g] for g in genes], dtype=np.float64)
        self.mapping = dictionaries.mapping
        # dictionary gene index per input column (-1 = unmapped), and the unmapped names
        self.map_genes = GeneColumns(self.lookup)

    def known_genes(self) -> list[str]:
        return list(self.genes)

    def lookup(self, gene: str) -> int:
        """Dictionary gene index of a gene id, through the model's mapping (-1 = unmapped)."""
        return self.gene_index.get(self.mapping.get(str(gene).upper(), ""), -1)

    def to_dictionary(self, counts: sp.csr_matrix, columns: np.ndarray) -> sp.csr_matrix:
        """Cells x dictionary genes; columns mapped onto the same gene are summed."""
        return to_model_genes(counts, columns, len(self.genes))

    def check(self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping) -> None:
        opts = GeneformerOptions.parse(options)
        columns, _ = self.map_genes(genes)

        def fix() -> str:
            symbols = not any(str(g).upper().startswith("ENS") for g in genes)
            hint = " (these look like gene symbols: map them to Ensembl ids first)"
            return f"send Ensembl gene ids (e.g. {self.genes[:3]}){hint if symbols else ''}"

        where = f"this Geneformer model's {len(self.genes):,}-gene dictionary"
        require_known_genes(genes, columns, where, fix)
        whole = np.array_equal(counts.data, np.round(counts.data))
        if not (opts.allow_non_integer or whole):
            raise InputError(
                "cells.data: Geneformer expects raw counts (whole numbers); for depth-scaled "
                'counts (not log-transformed) set options {"allow_non_integer": true}'
            )
        require_expressed(
            counts,
            columns,
            "Geneformer",
            "Drop these cells (the official tokenizer skips them) or check the gene ids, and "
            "resend.",
        )

    def tokenize(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping
    ) -> TokenizedCells:
        GeneformerOptions.parse(options)
        columns, unmapped = self.map_genes(genes)
        counts = sp.csr_matrix(counts, dtype=np.float64)
        n_counts = np.asarray(counts.sum(axis=1)).ravel()
        x = self.to_dictionary(counts, columns)
        n_cells = x.shape[0]
        per_cell = np.diff(x.indptr)
        empty = np.flatnonzero(per_cell == 0)
        if len(empty):
            raise InputError(
                f"cells: rows [{listed(empty)}] express none of the model's dictionary genes"
            )
        row_of = np.repeat(np.arange(n_cells), per_cell)
        rank_value = x.data / n_counts[row_of] * TARGET_SUM / self.medians[x.indices]
        tokens = self.token_ids[x.indices]

        # by cell, then rank value descending, then token id ascending (last key = primary)
        order = np.lexsort((tokens, -rank_value, row_of))
        rank_value, tokens = rank_value[order], tokens[order]
        rank = np.arange(len(order)) - x.indptr[row_of]  # row_of is unchanged by the sort
        keep = rank < self.max_genes
        rank_value, tokens, rank, row_of = rank_value[keep], tokens[keep], rank[keep], row_of[keep]

        n_genes = np.minimum(per_cell, self.max_genes)
        extra = 2 if self.special else 0
        offsets = np.concatenate([[0], np.cumsum(n_genes + extra)]).astype(np.int64)
        dest = offsets[row_of] + rank + (1 if self.special else 0)
        out_tokens = np.empty(offsets[-1], dtype=np.int64)
        out_values = np.zeros(offsets[-1], dtype=np.float64)
        out_tokens[dest], out_values[dest] = tokens, rank_value
        if self.special:
            out_tokens[offsets[:-1]] = self.cls_id
            out_tokens[offsets[1:] - 1] = self.eos_id
        return TokenizedCells(
            token_ids=out_tokens,
            values=out_values.astype(np.float32),
            offsets=offsets,
            unmapped_genes=list(unmapped),
        )
