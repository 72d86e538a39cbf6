"""Layer sweeps: score every layer of every model and the baselines, with intervals and nulls.

A sweep returns a :class:`SweepResult`: a tidy score table with columns
:data:`SCORE_COLUMNS` and a summary with one row per model, task and context naming the best
layer and its paired-bootstrap gain over the final layer
(:data:`~scstrata_scoring.summary.SUMMARY_COLUMNS`, :func:`~scstrata_scoring.summary.summarise`).

Conventions of the score table:

* ``depth = block / n_layers`` (0 = input embedding, 1 = last block), the block being the
  layer itself, or ``layer + 1`` for layers numbered as the study did (``X_layer_i`` = block
  ``i + 1``, :attr:`LayerSet.numbering`);
* ``pooling``: how the layer's tokens were pooled into a cell embedding (empty for baselines);
  ``recipe``: the scoring recipe (:mod:`.recipe`);
* baselines are rows with ``model`` = ``"baseline:pca"`` or ``"baseline:expression"`` and
  ``layer`` / ``depth`` empty (NaN);
* ``ci_low`` / ``ci_high``: 95 % percentile bootstrap interval (cells for the trajectory task,
  perturbations for the perturbation task), empty when undefined (proxies, p-values);
* ``null_z``: z-score against the permutation null (perturbation ``rsa_spearman`` only);
* ``n_cells``: cells scored; ``subsample_seed``: the seed of the random subsample they are
  (:mod:`.subsample`), empty when every cell was scored;
* metrics ``effective_rank`` and ``matrix_entropy`` are the label-free proxies of each layer
  (not of baselines), computed on the cells of the context.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .baselines import BASELINE_EXPRESSION, BASELINE_PCA, expression_matrix, log_normalise
from .baselines import hvg_pca as _hvg_pca
from .perturbation import (
    Centre,
    embedding_similarity,
    null_z,
    permutation_null,
    permutation_p_value,
    perturbation_reference,
    rsa_bootstrap,
    rsa_score,
)
from .proxies import effective_rank, matrix_entropy
from .recipe import Recipe, check_recipe
from .resample import BootstrapDraws, bootstrap_indices, percentile_interval
from .subsample import CellSample, sample_cells, take_rows
from .summary import summarise
from .trajectory import trajectory_evidence, trajectory_reference, trajectory_statistics

__all__ = ["SCORE_COLUMNS", "LayerSet", "SweepResult", "score_perturbation", "score_trajectory"]

logger = logging.getLogger(__name__)

#: Columns of each score row, in order.
ROW_COLUMNS = [
    "model",
    "pooling",
    "layer",
    "depth",
    "recipe",
    "task",
    "context",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "null_z",
]
#: Columns that say which cells a sweep scored, the same in every row.
SAMPLE_COLUMNS = ["n_cells", "subsample_seed"]
#: Columns of the tidy score table, in order.
SCORE_COLUMNS = [*ROW_COLUMNS, *SAMPLE_COLUMNS]


@dataclass(frozen=True)
class LayerSet:
    """One model's per-layer embeddings: ``{layer: (cells, dim)}`` and its block count.

    ``pooling`` names how they were pooled (a column of the score table). ``numbering`` is
    ``"scstrata"`` (layer k = block k, 0 = input embedding) or ``"study"`` (layer i = block
    i + 1, as the study wrote ``X_layer_i``); depth is block / ``n_layers`` either way.
    """

    model: str
    n_layers: int
    embeddings: Mapping[int, np.ndarray]
    pooling: str = "official"
    numbering: str = "scstrata"

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise ValueError(f"{self.model}: n_layers must be >= 1, got {self.n_layers}")
        if self.numbering not in ("scstrata", "study"):
            raise ValueError(f"numbering must be 'scstrata' or 'study', got {self.numbering!r}")

    def depth(self, layer: int) -> float:
        """Depth of ``layer``: its block over ``n_layers`` (see the class docstring)."""
        block = layer + 1 if self.numbering == "study" else layer
        return block / self.n_layers


@dataclass
class SweepResult:
    """A sweep's tidy ``scores`` and per model/task/context ``summary``."""

    scores: pd.DataFrame
    summary: pd.DataFrame


@dataclass
class _Collector:
    """Rows of the score table, and the bootstrap draws behind them (for paired gains)."""

    task: str
    recipe: str = "scstrata"
    n_cells: int = 0
    subsample_seed: float = np.nan
    rows: list[tuple] = field(default_factory=list)
    draws: dict[tuple, np.ndarray] = field(default_factory=dict)

    def add(self, rep: _Rep, context: str, metric: str, value: float, draws=None, z=np.nan):
        low, high = percentile_interval(draws) if draws is not None else (np.nan, np.nan)
        layer = np.nan if rep.layer is None else rep.layer
        self.rows.append(
            (
                rep.model,
                rep.pooling,
                layer,
                rep.depth,
                self.recipe,
                self.task,
                context,
                metric,
                value,
                low,
                high,
                z,
            )
        )
        if draws is not None:
            self.draws[(rep.model, rep.layer, context, metric)] = np.asarray(draws)

    def result(self) -> SweepResult:
        scores = pd.DataFrame(self.rows, columns=ROW_COLUMNS)
        scores["n_cells"] = self.n_cells
        scores["subsample_seed"] = self.subsample_seed
        scores["layer"] = scores["layer"].astype("Int64")
        return SweepResult(scores, summarise(scores, self.draws))


@dataclass(frozen=True)
class _Rep:
    model: str
    layer: int | None
    depth: float
    embedding: Any  # (cells, dim): dense, or sparse for the expression baseline
    pooling: str = ""  # empty for baselines


def score_trajectory(
    layer_sets: Iterable[LayerSet],
    adata: ad.AnnData,
    time_key: str,
    *,
    baselines: bool = True,
    n_boot: int = 500,
    seed: int = 0,
    n_top_genes: int = 2500,
    n_pcs: int = 50,
    n_neighbors: int = 30,
    k_overlap: int = 30,
    k_alignment: int = 15,
    context: str = "all",
    progress: bool = True,
    recipe: Recipe = "scstrata",
    subsample: int | None = None,
    subsample_seed: int = 0,
) -> SweepResult:
    """Trajectory scores of every layer of every model, and of the baselines.

    The reference (:func:`~scstrata_scoring.trajectory.trajectory_reference`) is computed once
    from ``adata`` (raw counts in ``X``, every cell with ``obs[time_key]``). Rows of every
    embedding must be the cells of ``adata`` in obs order. Metrics: ``dpt_spearman`` (main),
    ``time_spearman``, ``neighbourhood_overlap``, ``sequential_alignment``,
    ``dpt_unreachable_fraction`` and the proxies. Bootstrap: ``n_boot`` resamples of cells,
    seeded by ``seed``, shared by all rows.

    ``baseline:pca`` is the reference's own representation, so its ``dpt_spearman`` and
    ``neighbourhood_overlap`` are 1 by construction (a ceiling, not a competitor); under the
    study recipe its overlap is just under 1 (a cell with cell 0 among its neighbours has
    29 distinct entries in its padded table, not 30).

    ``recipe`` (:mod:`.recipe`): ``"scstrata"`` or the study's ``"study"``.

    ``subsample``: score a seeded random ``subsample`` of the cells (seed ``subsample_seed``;
    :func:`~scstrata_scoring.subsample.sample_cells`), the same for every row; None or at
    least ``adata.n_obs`` scores every cell. Only the sampled rows of each embedding are read.
    """
    sample = sample_cells(adata.n_obs, subsample, subsample_seed)
    reps = _layer_reps(layer_sets, adata.n_obs, sample)
    adata = take_rows(adata, sample)
    ref = trajectory_reference(
        adata,
        time_key,
        n_top_genes=n_top_genes,
        n_pcs=n_pcs,
        n_neighbors=n_neighbors,
        k_overlap=k_overlap,
        recipe=recipe,
    )
    if baselines:
        reps.append(_Rep(BASELINE_PCA, None, np.nan, ref.pca))
        reps.append(
            _Rep(BASELINE_EXPRESSION, None, np.nan, expression_matrix(log_normalise(adata)))
        )
    draws = BootstrapDraws(ref.n_cells, n_boot, (seed, 0))  # batched: memory bounded
    seed_column = np.nan if sample.seed is None else float(sample.seed)
    out = _Collector("trajectory", recipe, sample.n_cells, seed_column)
    for rep in tqdm(reps, desc="trajectory", disable=not progress):
        evidence = trajectory_evidence(rep.embedding, ref, n_neighbors, k_alignment)
        full = trajectory_statistics(evidence, ref)
        boot = draws.map(partial(trajectory_statistics, evidence, ref))
        for metric, value in full.items():
            out.add(rep, context, metric, float(value[0]), boot[metric])
        _add_proxies(out, rep, context, rep.embedding)
    return out.result()


def score_perturbation(
    layer_sets: Iterable[LayerSet],
    adata: ad.AnnData,
    perturbation_key: str = "perturbation",
    state_key: str | None = "state",
    control: str = "non-targeting",
    *,
    baselines: bool = True,
    min_cells: int = 5,
    n_top_genes: int = 500,
    n_permutations: int = 100,
    n_boot: int = 500,
    seed: int = 0,
    centre: Centre = "none",
    n_hvg: int = 2500,
    n_pcs: int = 50,
    progress: bool = True,
    recipe: Recipe = "scstrata",
) -> SweepResult:
    """Perturbation RSA of every layer of every model and of the baselines, per state.

    Each value of ``obs[state_key]`` is a context (all cells form context ``"all"`` when
    ``state_key`` is None); a context needs at least 3 perturbations with ``min_cells``
    cells and 2 control cells, or it is skipped with a warning. Per context: the reference
    (:func:`~scstrata_scoring.perturbation.perturbation_reference`, top ``n_top_genes`` genes
    by Welch t), ``rsa_spearman`` with a bootstrap interval over perturbations (``n_boot``)
    and the z-score against ``n_permutations`` label shuffles (``null_z``), plus its
    permutation p-value as metric ``rsa_p_value``, and the proxies. Permutations and
    resamples are seeded by ``seed`` and shared by every row of a context.

    ``recipe="study"`` builds each reference as the study did (:mod:`.perturbation`): from
    the file's own values (``adata.raw`` if present, else ``X``), not log-normalised.
    """
    recipe = check_recipe(recipe)
    reps = _layer_reps(layer_sets, adata.n_obs)
    lognorm = log_normalise(adata)
    profile_x, profile_genes = lognorm.X, lognorm.var_names
    if recipe == "study":
        source = adata.raw if adata.raw is not None else adata
        profile_x, profile_genes = source.X, source.var_names
    if baselines:
        reps.append(_Rep(BASELINE_PCA, None, np.nan, _hvg_pca(lognorm, n_hvg, n_pcs)))
        # Kept sparse: only per-perturbation means are ever taken of it.
        reps.append(_Rep(BASELINE_EXPRESSION, None, np.nan, lognorm.X))
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    contexts = _contexts(adata, state_key)
    out = _Collector("perturbation", recipe, adata.n_obs)
    for i, (context, mask) in enumerate(contexts):
        lab = labels[mask]
        try:
            ref = perturbation_reference(
                profile_x[mask], lab, control, profile_genes, min_cells, n_top_genes, recipe
            )
        except ValueError as err:
            logger.warning("perturbation: context %r skipped: %s", context, err)
            continue
        perts = ref.perturbations
        if len(perts) < 3:
            logger.warning(
                "perturbation: context %r skipped: %d perturbations with >= %d cells (need 3)",
                context,
                len(perts),
                min_cells,
            )
            continue
        n_member = int(np.isin(lab, perts).sum())
        perm_rng = np.random.default_rng([seed, i, 1])
        perms = np.array([perm_rng.permutation(n_member) for _ in range(n_permutations)])
        idx = bootstrap_indices(len(perts), n_boot, np.random.default_rng([seed, i, 0]))
        for rep in tqdm(reps, desc=f"perturbation {context}", disable=not progress):
            emb = rep.embedding[mask]
            sim = embedding_similarity(emb, lab, perts, control, centre)
            value = rsa_score(sim, ref.similarity)
            null = permutation_null(emb, lab, perts, ref.similarity, perms, control, centre)
            draws = rsa_bootstrap(sim, ref.similarity, idx)
            out.add(rep, context, "rsa_spearman", value, draws, null_z(value, null))
            out.add(rep, context, "rsa_p_value", permutation_p_value(value, null))
            _add_proxies(out, rep, context, emb)
    return out.result()


def _add_proxies(out: _Collector, rep: _Rep, context: str, embedding: np.ndarray) -> None:
    if rep.layer is None:
        return  # proxies rank a model's layers; baselines have none
    out.add(rep, context, "effective_rank", effective_rank(embedding))
    out.add(rep, context, "matrix_entropy", matrix_entropy(embedding))


def _layer_reps(
    layer_sets: Iterable[LayerSet], n_cells: int, sample: CellSample | None = None
) -> list[_Rep]:
    """Every layer as a representation (the ``sample``'s rows); checks shapes before any slow
    step, and before reading rows."""
    reps = []
    for layer_set in layer_sets:
        for layer in sorted(int(k) for k in layer_set.embeddings):
            emb = layer_set.embeddings[layer]
            shape = tuple(getattr(emb, "shape", np.shape(emb)))
            if len(shape) != 2 or shape[0] != n_cells:
                raise ValueError(
                    f"{layer_set.model} layer {layer}: embedding has shape {shape}, "
                    f"expected ({n_cells}, dim) rows = cells of adata"
                )
            rows = np.asarray(emb) if sample is None else take_rows(emb, sample)
            reps.append(
                _Rep(layer_set.model, layer, layer_set.depth(layer), rows, layer_set.pooling)
            )
    return reps


def _contexts(adata: ad.AnnData, state_key: str | None) -> list[tuple[str, np.ndarray]]:
    """``(state, cell mask)`` per state, in category order (else order of appearance)."""
    if state_key is None:
        return [("all", np.ones(adata.n_obs, dtype=bool))]
    states = adata.obs[state_key]
    if isinstance(states.dtype, pd.CategoricalDtype):
        order: Sequence = [c for c in states.cat.categories if (states == c).any()]
    else:
        order = list(pd.unique(states.dropna()))
    values = states.astype(object).to_numpy()
    return [(str(s), values == s) for s in order]
