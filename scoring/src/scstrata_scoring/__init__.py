"""scstrata-scoring: score which layer of a single-cell foundation model serves a task.

Metrics are pure functions (arrays in, numbers out); sweeps turn a dict of per-layer
embeddings into a tidy table ``model, layer, depth, metric, value``; plots and an HTML report
summarise it. Embeddings come from the scstrata service through ``scstrata_client``, which is
imported only when layers are pulled.
"""

from .plot import plot_scores
from .report import summary_line, write_report
from .simulate import simulate_trajectory
from .sweep import SCORE_COLUMNS, best_layer, card_field, model_card, pull_layers, score_layers
from .trajectory import (
    embedding_pseudotime,
    rank_unreachable_last,
    reference_pseudotime,
    root_cell,
    time_values,
    trajectory_scores,
)

__all__ = [
    "SCORE_COLUMNS",
    "best_layer",
    "card_field",
    "embedding_pseudotime",
    "model_card",
    "plot_scores",
    "pull_layers",
    "rank_unreachable_last",
    "reference_pseudotime",
    "root_cell",
    "score_layers",
    "simulate_trajectory",
    "summary_line",
    "time_values",
    "trajectory_scores",
    "write_report",
]
