"""A simulated Perturb-seq screen whose true similarity structure depends on the cell state.

Like the study's screens of T cells at rest and after stimulation: cells in several
activation states, a non-targeting control in each, and CRISPRi-like perturbations named
after their target gene. Perturbations act through shared downstream *modules*, so those loading
on the same modules resemble each other; each state weights the modules differently and some
perturbations are silent at rest, so which perturbations resemble each other differs between
states. The true effects are kept in ``uns`` for checking scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .perturbation import cosine_similarity
from .simulate import nb_counts

__all__ = [
    "simulate_perturbation",
    "true_effect_embedding",
    "true_effects",
    "true_similarity",
]

DEFAULT_STATES = ("Rest", "Stim8hr", "Stim48hr")


def simulate_perturbation(
    genes: Sequence[str],
    n_perturbations: int = 12,
    cells_per_perturbation: int = 30,
    n_control: int = 60,
    states: Sequence[str] = DEFAULT_STATES,
    n_modules: int = 4,
    seed: int = 0,
    *,
    control: str = "non-targeting",
    n_expressed: int = 2000,
    module_size: int = 250,
    module_log2: float = 1.0,
    mixing: float = 0.6,
    private_size: int = 30,
    private_log2: float = 0.5,
    state_size: int = 200,
    state_log2: float = 2.0,
    knockdown_log2: float = -2.0,
    mean_library_size: float = 5000.0,
    library_size_sd: float = 0.3,
    dispersion: float = 0.2,
) -> ad.AnnData:
    """Simulate raw counts of a Perturb-seq screen across activation states.

    Genes: a random subset of ``n_expressed`` symbols of ``genes`` is expressed with
    log-normal baseline :math:`b_g`; every other gene stays at zero (``var_names`` still
    cover all of ``genes``). Each state after the first shifts ``state_size`` genes by
    :math:`\\pm U(1, \\text{state\\_log2})` (log2), so states differ in expression.

    Effects (log2 fold changes) of perturbation *p* in state *s*:

    .. math::
        e_{ps} = g_{ps}\\, \\sigma_p \\Big(\\sum_m L_{pm}\\, a_{ms}\\, w_m + v_p\\Big) + k_p,

    * ``n_modules`` downstream modules, each a response :math:`w_m \\sim N(0,
      \\text{module\\_log2}^2)` on its own ``module_size`` random genes;
    * loadings :math:`L_p = e_{m_p} + \\text{mixing} \\cdot \\mathrm{Dirichlet}(1)`: mostly
      the primary module :math:`m_p = p \\bmod` ``n_modules``, partly the others, so that
      similarities are graded rather than in blocks;
    * module activity :math:`a_{ms} \\sim U(0.25, 1.5)` per state, and 0 for modules of odd
      index in the first state: a state re-weights the modules, so **which perturbations
      resemble each other depends on the state**;
    * gate :math:`g_{ps}`: 0 in the first state for perturbations whose primary module has an
      odd index (**silent at rest**), else 1;
    * switchers: from the third state on, every third perturbation (:math:`p \\bmod 3 = 2`)
      acts through other modules (its loadings shifted by :math:`s - 1` modules), so late
      states differ from early ones in *which* perturbations resemble each other;
    * strength :math:`\\sigma_p \\sim U(0.7, 1.3)`; private response :math:`v_p` on
      ``private_size`` genes, :math:`N(0, \\text{private\\_log2}^2)`;
    * knockdown :math:`k_p`: ``knockdown_log2`` on the target gene (the perturbation's name,
      a well-expressed gene), in every state.

    Counts: proportions :math:`\\propto b_g 2^{\\text{state shift} + e}`, times a log-normal
    library size, negative binomial with dispersion ``dispersion``
    (:func:`~scstrata_scoring.simulate.nb_counts`). Each state has ``n_control`` control
    cells and ``cells_per_perturbation`` cells per perturbation.

    Returns
    -------
    AnnData with raw counts in ``X`` (CSR float32), cells in random order, and

    * ``obs["perturbation"]``: target symbol or ``control``; ``obs["state"]``: ordered
      categorical of ``states``; ``obs["module"]``: primary module (-1 for control);
      ``obs["total_counts"]``;
    * ``uns["simulation"]``: the parameters, ``perturbations`` (names), ``modules`` (primary
      module per perturbation), ``loadings`` (perturbations x modules), ``activity`` (modules
      x states), ``expressed_genes`` and ``effects``: ``{state: array (perturbations,
      expressed genes)}`` of log2 effects.
    """
    genes = [str(g) for g in genes]
    states = [str(s) for s in states]
    n_expr = min(n_expressed, len(genes))
    if n_expr < max(module_size, private_size, state_size, n_perturbations) or n_expr < 2:
        raise ValueError(f"need more expressed genes than module/private/state sizes: {n_expr}")
    if n_perturbations < 1 or n_modules < 1 or not states or cells_per_perturbation < 1:
        raise ValueError("need at least one perturbation, module, state and cell per group")
    if control in genes:
        raise ValueError(f"control label {control!r} is also a gene symbol")
    rng = np.random.default_rng(seed)

    expressed = np.sort(rng.choice(len(genes), size=n_expr, replace=False))
    log_baseline = rng.normal(0.0, 1.0, n_expr)
    state_shift = np.zeros((len(states), n_expr))
    for s in range(1, len(states)):
        idx = rng.choice(n_expr, size=state_size, replace=False)
        state_shift[s, idx] = rng.uniform(1.0, state_log2, state_size) * rng.choice(
            [-1, 1], state_size
        )

    # Targets among well-expressed genes, so that their knockdown is visible.
    candidates = np.argsort(-log_baseline)[: max(4 * n_perturbations, n_perturbations)]
    targets = rng.choice(candidates, size=n_perturbations, replace=False)
    names = [genes[expressed[t]] for t in targets]
    modules = np.arange(n_perturbations) % n_modules
    effects, loadings, activity = _effects(
        rng,
        n_expr,
        len(states),
        modules,
        targets,
        module_size=module_size,
        module_log2=module_log2,
        mixing=mixing,
        private_size=private_size,
        private_log2=private_log2,
        knockdown_log2=knockdown_log2,
    )

    cell_state, cell_group = [], []
    for s in range(len(states)):
        cell_state += [s] * (n_control + n_perturbations * cells_per_perturbation)
        cell_group += [-1] * n_control + list(
            np.repeat(np.arange(n_perturbations), cells_per_perturbation)
        )
    order = rng.permutation(len(cell_state))
    cell_state = np.asarray(cell_state)[order]
    cell_group = np.asarray(cell_group)[order]
    n_cells = cell_state.size

    log2_rate = state_shift[cell_state].copy()
    perturbed = cell_group >= 0
    log2_rate[perturbed] += effects[cell_state[perturbed], cell_group[perturbed]]
    log_rate = log_baseline[None, :] + np.log(2.0) * log2_rate
    rate = np.exp(log_rate - log_rate.max(axis=1, keepdims=True))
    library = mean_library_size * np.exp(rng.normal(0.0, library_size_sd, n_cells))
    counts = nb_counts(rng, rate / rate.sum(axis=1, keepdims=True) * library[:, None], dispersion)

    block = sparse.csr_matrix(counts)
    x = sparse.csr_matrix(
        (block.data, expressed[block.indices], block.indptr), shape=(n_cells, len(genes))
    )
    label = np.array([control] + names, dtype=object)[cell_group + 1]
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(label, categories=[control, *sorted(names)]),
            "state": pd.Categorical(
                np.asarray(states, dtype=object)[cell_state], categories=states, ordered=True
            ),
            "module": np.where(perturbed, modules[np.clip(cell_group, 0, None)], -1),
            "total_counts": np.asarray(x.sum(axis=1)).ravel(),
        },
        index=pd.Index([f"cell{i}" for i in range(n_cells)]),
    )
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    adata.uns["simulation"] = {
        "kind": "perturbation",
        "seed": seed,
        "control": control,
        "states": states,
        "n_perturbations": n_perturbations,
        "cells_per_perturbation": cells_per_perturbation,
        "n_control": n_control,
        "n_modules": n_modules,
        "n_expressed": n_expr,
        "module_size": module_size,
        "module_log2": module_log2,
        "mixing": mixing,
        "private_size": private_size,
        "private_log2": private_log2,
        "state_size": state_size,
        "state_log2": state_log2,
        "knockdown_log2": knockdown_log2,
        "mean_library_size": mean_library_size,
        "library_size_sd": library_size_sd,
        "dispersion": dispersion,
        "perturbations": names,
        "modules": modules,
        "loadings": loadings,
        "activity": activity,
        "expressed_genes": [genes[i] for i in expressed],
        "effects": {state: effects[s] for s, state in enumerate(states)},
    }
    return adata


def true_effects(adata: ad.AnnData, state: str) -> pd.DataFrame:
    """The simulated log2 effects in ``state``: perturbations x expressed genes."""
    sim = adata.uns["simulation"]
    return pd.DataFrame(
        np.asarray(sim["effects"][state]),
        index=[str(p) for p in sim["perturbations"]],
        columns=[str(g) for g in sim["expressed_genes"]],
    )


def true_similarity(adata: ad.AnnData, state: str) -> pd.DataFrame:
    """Cosine similarity of the true effects in ``state`` (perturbations x perturbations).

    A perturbation with no effect in ``state`` other than its knockdown resembles nothing but
    itself.
    """
    effects = true_effects(adata, state)
    return pd.DataFrame(
        cosine_similarity(effects.to_numpy()), index=effects.index, columns=effects.index
    )


def true_effect_embedding(
    adata: ad.AnnData,
    noise: float = 0.0,
    seed: int = 0,
    perturbation_key: str = "perturbation",
    state_key: str = "state",
) -> np.ndarray:
    """A cell x gene "embedding" holding the true effect of each cell's perturbation.

    Row *c* is the log2 effect vector (over the expressed genes) of *c*'s perturbation in
    *c*'s state, zeros for control cells, plus Gaussian noise of sd ``noise``. The ideal
    layer: its perturbation RSA scores what the reference can recover.
    """
    sim = adata.uns["simulation"]
    names = [str(p) for p in sim["perturbations"]]
    index = {name: i for i, name in enumerate(names)}
    out = np.zeros((adata.n_obs, len(sim["expressed_genes"])))
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    cell_states = adata.obs[state_key].astype(str).to_numpy()
    for state in map(str, sim["states"]):
        effects = np.asarray(sim["effects"][state])
        for c in np.flatnonzero(cell_states == state):
            if labels[c] in index:
                out[c] = effects[index[labels[c]]]
    if noise > 0:
        out += np.random.default_rng(seed).normal(0.0, noise, out.shape)
    return out


def _effects(
    rng: np.random.Generator,
    n_expr: int,
    n_states: int,
    primary: np.ndarray,
    targets: np.ndarray,
    *,
    module_size: int,
    module_log2: float,
    mixing: float,
    private_size: int,
    private_log2: float,
    knockdown_log2: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log2 effects (states x perturbations x genes), loadings and activity; see the docstring."""
    n_pert = primary.size
    n_modules = int(primary.max()) + 1 if n_pert else 0
    response = np.zeros((n_modules, n_expr))
    for m in range(n_modules):
        idx = rng.choice(n_expr, size=module_size, replace=False)
        response[m, idx] = rng.normal(0.0, module_log2, module_size)
    loadings = np.eye(n_modules)[primary] + mixing * rng.dirichlet(np.ones(n_modules), n_pert)
    activity = rng.uniform(0.25, 1.5, (n_modules, n_states))
    activity[1::2, 0] = 0.0
    strength = rng.uniform(0.7, 1.3, n_pert)
    private = np.zeros((n_pert, n_expr))
    for p in range(n_pert):
        idx = rng.choice(n_expr, size=private_size, replace=False)
        private[p, idx] = rng.normal(0.0, private_log2, private_size)
    switcher = np.arange(n_pert) % 3 == 2
    effects = np.zeros((n_states, n_pert, n_expr))
    for s in range(n_states):
        gate = np.ones(n_pert) if s > 0 else (primary % 2 == 0).astype(float)
        load = loadings.copy()
        if s >= 2:
            load[switcher] = np.roll(loadings[switcher], s - 1, axis=1)
        effects[s] = (gate * strength)[:, None] * ((load * activity[:, s]) @ response + private)
        effects[s, np.arange(n_pert), targets] += knockdown_log2
    return effects, loadings, activity
