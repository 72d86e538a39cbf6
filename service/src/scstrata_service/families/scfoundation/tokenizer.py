"""scFoundation's own preprocessing, vectorised over a CSR matrix (models.md, "Input").

Per cell: map genes to the 19,264-symbol vocabulary by name, ``log1p(x / total * 1e4)`` for
raw counts (``pre_normalized=False``), append the T token (target resolution, from
``tgthighres``) and the S token (``log10(total)``), keep the positions whose value is > 0 in
vocabulary order (T and S last), and give each token its gene position (T = 19,264,
S = 19,265). The official script works in float64 and hands float32 to the model; so do we.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from pydantic import Field, field_validator

from scstrata_service.contract import FamilyOptions, InputError, TokenizedCells, listed
from scstrata_service.gene_mapping import (
    GeneColumns,
    mapped_totals,
    require_known_genes,
    to_model_genes,
)

TGTHIGHRES = re.compile(r"^[tfa]\d+(\.\d+)?$")
MAX_TGTHIGHRES = 1e3


class ScFoundationOptions(FamilyOptions):
    family_label = "scFoundation"

    pre_normalized: bool = Field(
        default=False,
        description="false: raw counts (normalised here); true: already log1p(x/total*1e4)",
    )
    tgthighres: str = Field(
        default="t4",
        description="T token: 't<k>' = k, 'f<k>' = log10(total*k), 'a<k>' = log10(total)+k",
    )

    @field_validator("tgthighres")
    @classmethod
    def _resolution_token(cls, value: str) -> str:
        if not TGTHIGHRES.match(value):
            raise ValueError(f"{value!r} is not t<k>, f<k> or a<k> (e.g. 't4')")
        if float(value[1:]) > MAX_TGTHIGHRES:  # beyond it the embeddings are NaN
            raise ValueError(
                f"k must be at most {MAX_TGTHIGHRES:g}; send t<k>, f<k> or a<k> with a small k "
                "(e.g. 't4')"
            )
        return value

    def target_token(self, total: np.ndarray) -> np.ndarray:
        kind, k = self.tgthighres[0], float(self.tgthighres[1:])
        with np.errstate(divide="ignore"):
            if kind == "t":
                return np.full_like(total, k)
            if kind == "f":
                return np.log10(total * k)
            return np.log10(total) + k


class ScFoundationTokenizer:
    """contract.Tokenizer; token ids are gene positions in the vocabulary (T, S after it)."""

    options = ScFoundationOptions

    def __init__(self, vocabulary: Sequence[str]):
        self.vocabulary = list(vocabulary)
        self.index = {gene: i for i, gene in enumerate(self.vocabulary)}
        self.t_position = len(self.vocabulary)
        self.s_position = len(self.vocabulary) + 1
        # vocabulary index per input column (-1 = unknown), and the unknown names
        self.map_genes = GeneColumns(lambda gene: self.index.get(gene, -1))

    def known_genes(self) -> list[str]:
        return list(self.vocabulary)

    def to_vocabulary(self, counts: sp.csr_matrix, columns: np.ndarray) -> sp.csr_matrix:
        """Reorder/fill the input columns to vocabulary order (missing genes are zero)."""
        return to_model_genes(counts, columns, len(self.vocabulary))

    def check(self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping) -> None:
        opts = ScFoundationOptions.parse(options)
        columns, _ = self.map_genes(genes)
        where = f"scFoundation's {len(self.vocabulary):,}-gene vocabulary"
        require_known_genes(
            genes, columns, where, f"send HGNC gene symbols (e.g. {self.vocabulary[:3]})"
        )
        if not opts.pre_normalized and counts.nnz:
            data = counts.data
            if not np.array_equal(data, np.round(data)):
                raise InputError(
                    "cells.data: raw counts must be whole numbers; for log-normalised input "
                    'set options {"pre_normalized": true}'
                )
        total = mapped_totals(counts, columns)
        bad = np.flatnonzero((total <= 1) | (opts.target_token(total) <= 0))
        if len(bad):
            raise InputError(
                f"cells: {len(bad)} cell(s) have a total of at most 1 over the model's genes "
                f"(or a non-positive T token), so scFoundation's log10-total tokens are undefined: "
                f"rows [{listed(bad)}]. Drop or filter these cells (e.g. min counts > 1) and "
                "resend."
            )

    def tokenize(
        self, counts: sp.csr_matrix, genes: Sequence[str], options: Mapping
    ) -> TokenizedCells:
        opts = ScFoundationOptions.parse(options)
        columns, unmapped = self.map_genes(genes)
        x = self.to_vocabulary(counts, columns)
        n_cells = x.shape[0]
        row_of = np.repeat(np.arange(n_cells), np.diff(x.indptr))
        total = np.asarray(x.sum(axis=1)).ravel()
        if opts.pre_normalized:
            values = x.data
        else:
            values = np.log1p(x.data / total[row_of] * 1e4)
        keep = values > 0  # the official gathering keeps values > 0 only
        values, genes_idx, row_of = values[keep], x.indices[keep], row_of[keep]

        n_genes = np.bincount(row_of, minlength=n_cells)
        offsets = np.concatenate([[0], np.cumsum(n_genes + 2)]).astype(np.int64)
        gene_starts = np.concatenate([[0], np.cumsum(n_genes)[:-1]])
        dest = offsets[row_of] + (np.arange(len(values)) - gene_starts[row_of])

        out_values = np.empty(offsets[-1], dtype=np.float64)
        out_positions = np.empty(offsets[-1], dtype=np.int64)
        out_values[dest], out_positions[dest] = values, genes_idx
        with np.errstate(divide="ignore"):
            out_values[offsets[1:] - 2] = opts.target_token(total)
            out_values[offsets[1:] - 1] = np.log10(total)
        out_positions[offsets[1:] - 2] = self.t_position
        out_positions[offsets[1:] - 1] = self.s_position
        return TokenizedCells(
            token_ids=out_positions,
            values=out_values.astype(np.float32),
            offsets=offsets,
            unmapped_genes=list(unmapped),
        )
