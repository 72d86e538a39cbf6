"""Words for the metrics: a plain name for each, and one sentence on what it measures.

Reports and plots show these beside the identifiers of the score table, so that a reader new
to the package can tell what a number means and which values are good.
"""

from __future__ import annotations

__all__ = ["METRIC_INFO", "METRIC_LABELS", "label"]

#: Plain names of the metrics, for headlines and plots (the identifier follows in brackets).
METRIC_LABELS = {
    "dpt_spearman": "pseudotime agreement",
    "time_spearman": "agreement with time labels",
    "neighbourhood_overlap": "neighbourhood overlap",
    "sequential_alignment": "time-label alignment",
    "dpt_unreachable_fraction": "cells off the root's graph",
    "rsa_spearman": "perturbation similarity agreement",
    "rsa_p_value": "permutation p-value",
    "effective_rank": "effective rank",
    "matrix_entropy": "matrix entropy",
}

#: One sentence per metric: what it measures and its range.
METRIC_INFO = {
    "dpt_spearman": "Spearman correlation between each cell's diffusion pseudotime on the "
    "layer's neighbour graph and on the reference (PCA of the expression), from the same root "
    "cell; -1 to 1, 1 = the same order of cells.",
    "time_spearman": "Spearman correlation between the layer's diffusion pseudotime and the "
    "observed time labels; -1 to 1, 1 = cells ordered as sampled.",
    "neighbourhood_overlap": "share of each cell's 30 nearest neighbours in the layer that are "
    "also among its 30 nearest in the reference PCA, averaged over cells; 0 to 1, random "
    "cells give about 30 / number of cells.",
    "sequential_alignment": "how much closer in time a cell's 15 nearest neighbours are than "
    "random cells (cz-benchmarks); 0 = no better than random, 1 = the same time label.",
    "dpt_unreachable_fraction": "share of cells the layer's neighbour graph does not connect "
    "to the root cell, so that they have no pseudotime; 0 to 1, lower is better.",
    "rsa_spearman": "Spearman correlation, over pairs of perturbations, between how similar "
    "their mean embeddings are in the layer (cosine) and how similar their expression shifts "
    "are; -1 to 1, 0 = unrelated, 1 = the same ranking of pairs.",
    "rsa_p_value": "one-sided permutation p-value of the perturbation score against shuffled "
    "perturbation labels; above 0 to 1, small = more than chance.",
    "effective_rank": "label-free: exp(entropy of the normalised singular values) of the "
    "centred embedding, the number of directions it uses; 1 to its dimension.",
    "matrix_entropy": "label-free: entropy of the eigenvalues of the trace-normalised "
    "covariance; 0 (one direction) to log(dimension).",
}


def label(metric: str) -> str:
    """The plain name of ``metric`` (the identifier itself when it has none)."""
    return METRIC_LABELS.get(metric, metric)
