"""scstrata-scoring: score which layer of a single-cell foundation model serves a task.

Metrics are pure functions (arrays in, numbers out; formulas in their docstrings) in
:mod:`.trajectory`, :mod:`.neighbours`, :mod:`.perturbation` and :mod:`.proxies`. Sweeps
(:mod:`.sweep`) score
every layer of every model and the parameter-free baselines with bootstrap intervals and
permutation nulls into a tidy table; :mod:`.summary`, :mod:`.plot` and :mod:`.report`
summarise it. Simulators
with ground truth live in :mod:`.simulate` and :mod:`.simulate_perturbation`, readers of real
data in :mod:`.data`. Embeddings come from the scstrata service through ``scstrata_client``,
imported only when layers are pulled (:mod:`.pull`).
"""

from .baselines import BASELINE_EXPRESSION, BASELINE_PCA, baseline_embeddings, log_normalise
from .data import read_perturbation, read_trajectory
from .perturbation import (
    PerturbationReference,
    cosine_similarity,
    embedding_similarity,
    null_z,
    permutation_null,
    permutation_p_value,
    perturbation_reference,
    rsa_score,
    shift_profiles,
    spearman_similarity,
    welch_t,
)
from .plot import plot_scores
from .proxies import effective_rank, matrix_entropy
from .pull import card_field, model_card, pull_layers
from .report import summary_line, write_report
from .resample import bootstrap_indices, paired_difference, percentile_interval
from .simulate import simulate_trajectory
from .simulate_perturbation import (
    simulate_perturbation,
    true_effect_embedding,
    true_effects,
    true_similarity,
)
from .summary import MAIN_METRIC, SUMMARY_COLUMNS, best_layer, summarise
from .sweep import SCORE_COLUMNS, LayerSet, SweepResult, score_perturbation, score_trajectory
from .trajectory import (
    TrajectoryReference,
    embedding_pseudotime,
    neighbourhood_overlap,
    rank_unreachable_last,
    reference_pseudotime,
    root_cell,
    sequential_alignment,
    time_values,
    trajectory_reference,
    trajectory_scores,
)

__all__ = [
    "BASELINE_EXPRESSION",
    "BASELINE_PCA",
    "MAIN_METRIC",
    "SCORE_COLUMNS",
    "SUMMARY_COLUMNS",
    "LayerSet",
    "PerturbationReference",
    "SweepResult",
    "TrajectoryReference",
    "baseline_embeddings",
    "best_layer",
    "bootstrap_indices",
    "card_field",
    "cosine_similarity",
    "effective_rank",
    "embedding_pseudotime",
    "embedding_similarity",
    "log_normalise",
    "matrix_entropy",
    "model_card",
    "neighbourhood_overlap",
    "null_z",
    "paired_difference",
    "percentile_interval",
    "permutation_null",
    "permutation_p_value",
    "perturbation_reference",
    "plot_scores",
    "pull_layers",
    "rank_unreachable_last",
    "read_perturbation",
    "read_trajectory",
    "reference_pseudotime",
    "root_cell",
    "rsa_score",
    "score_perturbation",
    "score_trajectory",
    "sequential_alignment",
    "shift_profiles",
    "simulate_perturbation",
    "simulate_trajectory",
    "spearman_similarity",
    "summarise",
    "summary_line",
    "time_values",
    "trajectory_reference",
    "trajectory_scores",
    "true_effect_embedding",
    "true_effects",
    "true_similarity",
    "welch_t",
    "write_report",
]
