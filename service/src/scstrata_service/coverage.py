"""How much of a request reached the model: genes it knows, and each cell's counts on them.

A request whose names the model does not know (mouse-case symbols sent to a human model,
Ensembl ids to a symbol model) still embeds, on the few genes that matched, and the model
sees a fraction of each cell. Below ``min_mapped_fraction`` of the counts (a request option,
default 0.5) the request is refused with a 400 naming the likely cause; above it the reply
reports the fractions and the client warns when anything was dropped.

A subset of genes (2,000 highly variable genes, say) passes that check, since all its counts
are on known genes, yet the model still sees a fraction of each cell. So a request must also
carry ``min_known_genes`` of the model's genes (a request option; the server's default is
``SCSTRATA_MIN_KNOWN_GENES``, 5,000), or half of them for a model that knows fewer than twice
that: full-transcriptome data carries tens of thousands for every family here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from scstrata_service.contract import InputError, ModelCard
from scstrata_service.gene_mapping import mapped_totals
from scstrata_service.settings import DEFAULT_MIN_KNOWN_GENES

DEFAULT_MIN_MAPPED_FRACTION = 0.5
ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}")
MOUSE_CASE = re.compile(r"^[A-Z][a-z0-9]+[a-z0-9-]*$")  # Actb, Gapdh, Cd3e


@dataclass(frozen=True)
class Coverage:
    gene_fraction: float  # of the request's gene names, those the model knows
    count_fraction: float  # of all the request's counts, those on known genes
    cell_count_fractions: np.ndarray  # per cell (1.0 for a cell without counts)
    n_known_genes: int = 0  # the model's genes the request carries (each counted once)


def measure(counts: sp.csr_matrix, columns: np.ndarray) -> Coverage:
    """``columns``: the model's gene index per input column, -1 where it has none."""
    totals = np.asarray(sp.csr_matrix(counts).sum(axis=1)).ravel()
    known = mapped_totals(counts, columns)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_cell = np.where(totals > 0, known / totals, 1.0)
    all_counts = float(totals.sum())
    return Coverage(
        gene_fraction=float((columns >= 0).mean()) if len(columns) else 0.0,
        count_fraction=float(known.sum()) / all_counts if all_counts > 0 else 1.0,
        cell_count_fractions=per_cell.astype(np.float32),
        n_known_genes=int(np.unique(columns[columns >= 0]).size),
    )


def check(
    coverage: Coverage,
    genes: Sequence[str],
    card: ModelCard,
    minimum: float,
    min_known_genes: int = DEFAULT_MIN_KNOWN_GENES,
    n_model_genes: int | None = None,
) -> None:
    """Refuse (400) when less than ``minimum`` of the counts reach the model, or when the
    request carries fewer of the model's genes than :func:`genes_required`."""
    if coverage.count_fraction >= minimum:
        check_known_genes(coverage, card, min_known_genes, n_model_genes)
        return
    raise InputError(
        f"genes: only {coverage.count_fraction:.1%} of the counts (and {coverage.gene_fraction:.1%}"
        f" of the {len(genes)} gene names) are on genes model {card.name!r} knows, below "
        f"min_mapped_fraction={minimum:g}; {likely_cause(genes, card)} "
        "(set min_mapped_fraction lower to embed anyway)"
    )


def genes_required(min_known_genes: int, n_model_genes: int | None) -> int:
    """``min_known_genes``, or half the model's genes when that is fewer (a small panel)."""
    if n_model_genes is None:
        return min_known_genes
    return min(min_known_genes, n_model_genes // 2)


def check_known_genes(
    coverage: Coverage, card: ModelCard, min_known_genes: int, n_model_genes: int | None
) -> None:
    required = genes_required(min_known_genes, n_model_genes)
    if coverage.n_known_genes >= required:
        return
    of = f" of its {n_model_genes}" if n_model_genes is not None else ""
    raise InputError(
        f"genes: the request carries {coverage.n_known_genes}{of} genes model {card.name!r} "
        f"knows, fewer than the {required} required (min_known_genes), so the model would see "
        "a fraction of "
        "each cell; likely a gene subset such as highly variable genes (HVGs): send all genes' "
        "raw counts, e.g. adata.raw or the counts layer (counts_layer=) "
        "(set min_known_genes lower to embed the subset anyway)"
    )


def likely_cause(genes: Sequence[str], card: ModelCard) -> str:
    sample = list(genes[:2000])
    ensembl = sum(bool(ENSEMBL.match(g)) for g in sample) / max(len(sample), 1)
    mouse_case = sum(bool(MOUSE_CASE.match(g)) for g in sample) / max(len(sample), 1)
    if card.gene_id_kind == "symbol" and ensembl > 0.5:
        return (
            "the names look like Ensembl ids but this model takes HGNC symbols: send symbols "
            "(e.g. adata.var['gene_symbols'] via gene_column=)"
        )
    if card.gene_id_kind == "ensembl" and ensembl < 0.5:
        return (
            "this model takes Ensembl ids (ENSG...) but the names look like symbols: send the "
            "Ensembl column (gene_column=, e.g. adata.var['gene_ids'])"
        )
    if card.gene_id_kind == "symbol" and mouse_case > 0.5:
        return (
            "the names look like mouse symbols (Actb) and this model knows human symbols "
            "(ACTB): map mouse genes to their human orthologues first"
        )
    return (
        "the names may be of another species or naming scheme, or the matrix holds a subset "
        "of genes (e.g. highly variable genes): send all genes' raw counts under the model's "
        f"{card.gene_id_kind} names"
    )
