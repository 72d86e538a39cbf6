"""``scstrata-score``: simulate data, or sweep served models' layers and score them.

``trajectory`` and ``perturbation`` pull every layer of each ``--model`` through the client
(cached by the client, see ``--cache``), or take them from the data file's ``obsm``
(``--obsm GLOB``), score the layers and the baselines with ``--recipe``, and write to ``--out``:
``scores.csv`` (tidy, :data:`~scstrata_scoring.sweep.SCORE_COLUMNS`), ``summary.csv``
(:data:`~scstrata_scoring.sweep.SUMMARY_COLUMNS`), ``<task>.png`` and ``report.html``.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
from scipy import sparse

from .data import read_perturbation, read_trajectory
from .plot import plot_scores
from .provenance import file_digest, package_versions
from .pull import card_field, card_get, model_card, pull_layers
from .recipe import RECIPES, service_request, study_layer_number
from .report import summary_line, write_report
from .simulate import simulate_trajectory
from .simulate_perturbation import simulate_perturbation
from .sweep import LayerSet, SweepResult, score_perturbation, score_trajectory
from .threads import apply_threads

__all__ = [
    "Loaded",
    "load_embeddings",
    "main",
    "obsm_layer_set",
    "parse_layers",
    "read_genes",
    "store_layer_set",
]


def read_genes(path: str | Path) -> list[str]:
    """Gene symbols from a TSV/CSV with a ``gene_name`` header column, or one symbol a line.

    scFoundation's ``OS_scRNA_gene_index.19264.tsv`` (columns ``gene_name``, ``index``) is the
    first kind.
    """
    lines = [ln.rstrip("\r\n") for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: no genes")
    sep = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else None)
    if sep is not None:
        header = [h.strip() for h in lines[0].split(sep)]
        if "gene_name" not in header:
            raise ValueError(f"{path}: a table needs a 'gene_name' column, found {header}")
        col = header.index("gene_name")
        return [ln.split(sep)[col].strip() for ln in lines[1:]]
    return [ln.strip() for ln in lines]


def parse_layers(text: str) -> int | list[int] | str:
    """``all``, one index (``-1``) or a comma list (``0,6,12``), as the service accepts them."""
    text = text.strip()
    if text.lower() == "all":
        return "all"
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        return int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--layers: expected 'all', an integer or a comma list of integers, got {text!r}"
        ) from err


def _simulate(args: argparse.Namespace) -> int:
    genes = read_genes(args.genes)
    if args.kind == "perturbation":
        adata = simulate_perturbation(
            genes,
            n_perturbations=args.n_perturbations,
            cells_per_perturbation=args.cells_per_perturbation,
            n_control=args.n_control,
            states=[s.strip() for s in args.states.split(",") if s.strip()],
            seed=args.seed,
        )
        keys = "perturbation key 'perturbation', state key 'state', control 'non-targeting'"
    else:
        topology = "branching" if args.kind == "branching" else "linear"
        adata = simulate_trajectory(genes, n_cells=args.n_cells, seed=args.seed, topology=topology)
        keys = "time key 'time'"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    print(f"wrote {out}: {adata.n_obs} cells x {adata.n_vars} genes ({keys})")
    return 0


@dataclass
class Loaded:
    """Embeddings to score, with what the report says about where they came from."""

    layer_sets: list[LayerSet]
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)


def load_embeddings(args: argparse.Namespace, adata: ad.AnnData) -> Loaded:
    """The per-layer embeddings of ``adata``'s cells that a sweep scores.

    From ``adata.obsm`` when ``--obsm`` is given (:func:`obsm_layer_set`), else pulled from
    the service at ``--url`` for each ``--model`` (:func:`~scstrata_scoring.pull.pull_layers`)
    with the request of ``--recipe`` (:func:`~scstrata_scoring.recipe.service_request`).
    A zarr store the client wrote (``--store``, :func:`store_layer_set`) is a third source.
    This is the one place embeddings enter a sweep: a new source goes here.
    """
    if args.obsm and args.store:
        raise ValueError("--obsm and --store are two sources of embeddings: give one")
    if args.store:
        return store_layer_set(args, adata)
    if args.obsm:
        layer_set = obsm_layer_set(
            adata,
            args.obsm,
            model=args.model[0] if args.model else None,
            n_layers=args.n_layers,
            pooling=args.pooling or "unknown",
            numbering=args.layer_numbering,
        )
        keys = sorted(_matching_keys(adata, args.obsm), key=_layer_of_key)
        return Loaded(
            [layer_set],
            list(args.note or []),
            {
                "embeddings": f"adata.obsm of the data file: {', '.join(keys)}",
                "pooling": layer_set.pooling,
                "layers": _ranges(sorted(layer_set.embeddings)),
                "layer numbering": args.layer_numbering,
            },
        )
    if not args.url or not args.model:
        raise ValueError("--url and --model are required unless --obsm or --store is given")
    layer_sets, notes, models = [], list(args.note or []), {}
    for model in dict.fromkeys(args.model):
        card = model_card(args.url, model)
        request = service_request(card, args.recipe, args.pooling, args.layers)
        embeddings = pull_layers(
            args.url,
            model,
            adata,
            request.layers,
            pooling=request.pooling,
            options=request.options or None,
            genes=_genes(adata, args.gene_column),
            cache=not args.no_cache,
            cache_dir=args.cache,
        )
        numbering = "scstrata"
        if args.recipe == "study":
            embeddings = {study_layer_number(k): v for k, v in embeddings.items()}
            numbering = "study"
        n_layers = int(card_field(card, "n_layers"))
        layer_sets.append(LayerSet(model, n_layers, embeddings, request.pooling, numbering))
        if card_get(card, "demo_weights"):
            notes.append(f"Model {model!r} runs demo (random) weights: scores are not biology.")
        models[model] = {
            "family": card_get(card, "family"),
            "checkpoint digest": card_get(card, "checkpoint_digest") or "none given",
            "blocks": n_layers,
            "pooling": request.pooling,
            "options": request.options or "none",
            "layers": _ranges(sorted(embeddings)),
        }
    if args.recipe == "study":
        notes.append(
            "Layers are numbered as the study numbered them: layer i is the output of block "
            "i + 1, without the final norm; the input embedding is not scored."
        )
    provenance = {"service": args.url, "models": models}
    return Loaded(layer_sets, notes, provenance)


def store_layer_set(args: argparse.Namespace, adata: ad.AnnData) -> Loaded:
    """The layers of a zarr store written by ``Client.embed(..., out=PATH)``.

    ``--model`` and ``--pooling`` pick the job when the store holds several. Its rows must be
    the cells of ``--data`` in order: the store's input digest (gene names, shape, non-zeros
    per row) is checked against the data as read. Depth = layer / ``--n-layers`` (default:
    the deepest layer in the store).
    """
    from scstrata_client.store import digest_structure, read_store  # lazy: optional source

    store = read_store(args.store, args.model[0] if args.model else None, args.pooling)
    spec = store.spec
    x = adata.layers[args.counts_layer] if args.counts_layer else adata.X
    genes = _genes(adata, args.gene_column) or list(adata.var_names)
    indptr = sparse.csr_matrix(x).indptr if sparse.issparse(x) else None
    if digest_structure(genes, adata.n_obs, indptr) != spec.input.data_digest:
        raise ValueError(
            f"--store: {args.store} holds embeddings of other cells than --data "
            f"({spec.input.n_cells} cells x {spec.input.n_genes} genes; the data as read has "
            f"{adata.n_obs} x {adata.n_vars}): score the file the store was written from"
        )
    embeddings = {k: store.to_numpy(k) for k in store.layers}
    n_layers = args.n_layers or max(embeddings)
    if n_layers < 1:
        raise ValueError("--store: the only layer stored is 0; give --n-layers for its depth")
    layer_set = LayerSet(spec.model, n_layers, embeddings, spec.pooling)
    return Loaded(
        [layer_set],
        list(args.note or []),
        {
            "embeddings": f"zarr store {Path(args.store).resolve()}",
            "models": {
                spec.model: {
                    "checkpoint digest": spec.checkpoint_digest or "none given",
                    "card digest": spec.card_digest,
                    "pooling": spec.pooling,
                    "options": spec.options or "none",
                    "layers": _ranges(sorted(embeddings)),
                }
            },
        },
    )


def obsm_layer_set(
    adata: ad.AnnData,
    pattern: str,
    *,
    model: str | None = None,
    n_layers: int | None = None,
    pooling: str = "unknown",
    numbering: str = "scstrata",
) -> LayerSet:
    """The ``adata.obsm`` arrays whose keys match the glob ``pattern``, as one model's layers.

    Each key's layer number is the last integer in it (``X_layer_7`` -> 7). Depth is layer /
    ``n_layers``, which defaults to the largest number found; with ``numbering="study"``
    (keys written as the study did, ``X_layer_i`` = block ``i + 1``) it is ``(i + 1)`` /
    ``n_layers``, which defaults to the largest number + 1. ``model`` (default: the pattern
    without its wildcards) names them in the tables.
    """
    keys = _matching_keys(adata, pattern)
    if not keys:
        known = ", ".join(adata.obsm.keys()) or "none"
        raise ValueError(f"--obsm: no obsm key matches {pattern!r} (has: {known})")
    embeddings: dict[int, np.ndarray] = {}
    for key in keys:
        layer = _layer_of_key(key)
        if layer in embeddings:
            raise ValueError(f"--obsm: two keys matching {pattern!r} give layer {layer}")
        value = adata.obsm[key]
        embeddings[layer] = np.asarray(value.toarray() if sparse.issparse(value) else value)
    top = max(embeddings) + (1 if numbering == "study" else 0)
    if n_layers is None:
        if top < 1:
            raise ValueError("--obsm: the only layer found is 0; give --n-layers for its depth")
        n_layers = top
    elif n_layers < top:
        raise ValueError(f"--n-layers {n_layers} is below the deepest layer found ({top})")
    name = model or (pattern.replace("*", "").replace("?", "").strip("_") or "embeddings")
    return LayerSet(name, n_layers, embeddings, pooling, numbering)


def _matching_keys(adata: ad.AnnData, pattern: str) -> list[str]:
    return [key for key in adata.obsm if fnmatch.fnmatchcase(key, pattern)]


def _layer_of_key(key: str) -> int:
    found = re.findall(r"\d+", key)
    if not found:
        raise ValueError(f"--obsm: key {key!r} has no layer number in it")
    return int(found[-1])


def _genes(adata: ad.AnnData, gene_column: str | None) -> list[str] | None:
    return None if gene_column is None else adata.var[gene_column].astype(str).tolist()


def _read_data(args: argparse.Namespace, task: str) -> ad.AnnData:
    path = Path(args.data)
    if not path.is_file():
        raise ValueError(f"--data: {path}: no such file")
    if task == "trajectory":
        adata = read_trajectory(path, args.time_key, counts_layer=args.counts_layer)
    else:
        adata = read_perturbation(
            path, args.perturbation_key, args.state, args.control, args.counts_layer
        )
    if args.gene_column is not None and args.gene_column not in adata.var.columns:
        known = ", ".join(adata.var.columns) or "none"
        raise ValueError(
            f"--gene-column: adata.var has no column {args.gene_column!r} (has: {known})"
        )
    return adata


def _trajectory(args: argparse.Namespace) -> int:
    adata = _read_data(args, "trajectory")
    loaded = load_embeddings(args, adata)
    result = score_trajectory(
        loaded.layer_sets,
        adata,
        args.time_key,
        baselines=not args.no_baselines,
        n_boot=args.n_boot,
        seed=args.seed,
        recipe=args.recipe,
        subsample=args.subsample,
        subsample_seed=args.subsample_seed,
    )
    return _write(args, result, "trajectory", loaded, adata)


def _perturbation(args: argparse.Namespace) -> int:
    args.state = None if args.state_key.lower() == "none" else args.state_key
    adata = _read_data(args, "perturbation")
    loaded = load_embeddings(args, adata)
    result = score_perturbation(
        loaded.layer_sets,
        adata,
        args.perturbation_key,
        args.state,
        args.control,
        baselines=not args.no_baselines,
        min_cells=args.min_cells,
        n_top_genes=args.n_top_genes,
        n_permutations=args.n_permutations,
        n_boot=args.n_boot,
        seed=args.seed,
        centre=args.centre,
        recipe=args.recipe,
    )
    if result.scores.empty:
        raise ValueError("no context had enough perturbations to score")
    return _write(args, result, "perturbation", loaded, adata)


def _provenance(
    args: argparse.Namespace, task: str, loaded: Loaded, adata: ad.AnnData
) -> dict[str, Any]:
    seeds = f"--seed {args.seed} (bootstrap draws"
    seeds += ", label shuffles)" if task == "perturbation" else ")"
    record = {
        "data file": str(Path(args.data).resolve()),
        "data digest": file_digest(args.data),
        "cells scored": adata.n_obs,
        "genes": adata.n_vars,
        "counts": f"layers[{args.counts_layer!r}]" if args.counts_layer else "X",
        "gene names": f"var[{args.gene_column!r}]" if args.gene_column else "var_names",
        "recipe": args.recipe,
        **loaded.provenance,
        "bootstrap draws": args.n_boot,
        "seeds": seeds + "; scanpy random_state 0 (neighbours, diffusion map, PCA)",
        "packages": package_versions(),
    }
    if task == "perturbation":
        record["label shuffles"] = args.n_permutations
    return record


def _write(
    args: argparse.Namespace, result: SweepResult, task: str, loaded: Loaded, adata: ad.AnnData
) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.scores.to_csv(out / "scores.csv", index=False)
    result.summary.to_csv(out / "summary.csv", index=False)
    plot = plot_scores(result.scores, out / f"{task}.png")
    report = write_report(
        result.scores,
        out,
        loaded.notes,
        summary=result.summary,
        plot_name=plot.name,
        title=f"Layer scores: {task}",
        provenance=_provenance(args, task, loaded, adata),
    )
    for row in result.summary.to_dict("records"):
        print(summary_line(row))
    print(f"wrote {out / 'scores.csv'}, {out / 'summary.csv'}, {plot}, {report}")
    return 0


def _ranges(values: list[int]) -> str:
    """``0-3, 6`` for ``[0, 1, 2, 3, 6]``."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("embeddings: from the service, or already in the file")
    source.add_argument("--url", help="service URL, e.g. http://localhost:3000")
    source.add_argument(
        "--model",
        action="append",
        help="served model (repeat for several); with --obsm, the name shown for them",
    )
    source.add_argument(
        "--obsm",
        metavar="GLOB",
        help="score adata.obsm arrays whose keys match GLOB (e.g. 'X_layer*'), no service; "
        "the layer is the last number in each key",
    )
    source.add_argument(
        "--store",
        metavar="PATH",
        help="score the layers of a zarr store the client wrote (Client.embed(..., out=PATH))",
    )
    source.add_argument(
        "--n-layers",
        type=int,
        help="with --obsm/--store: blocks of the model, depth = layer / N (default: deepest)",
    )
    source.add_argument(
        "--layer-numbering",
        choices=["scstrata", "study"],
        default="scstrata",
        help="with --obsm: 'study' reads X_layer_i as block i + 1 (default: layer k = block k)",
    )
    parser.add_argument("--data", required=True, help=".h5ad with raw counts")
    parser.add_argument("--counts-layer", help="take counts from adata.layers[NAME], not X")
    parser.add_argument("--gene-column", help="take gene names from adata.var[COLUMN]")
    parser.add_argument(
        "--layers", type=parse_layers, default="all", help="all | K | K1,K2,... (service)"
    )
    parser.add_argument(
        "--pooling",
        help="pooling to ask for (default: the card's, or the study's token with --recipe "
        "study); with --obsm, only a label for the tables",
    )
    parser.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default="scstrata",
        help="scstrata (default) or the study's published method (scoring/README.md)",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n-boot", type=int, default=500, help="bootstrap draws (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of resamples and shuffles")
    parser.add_argument("--no-baselines", action="store_true", help="skip the PCA/expression rows")
    parser.add_argument(
        "--cache",
        help="the client's embedding cache (default $SCSTRATA_CACHE_DIR or ~/.cache/scstrata)",
    )
    parser.add_argument("--no-cache", action="store_true", help="always pull from the service")
    parser.add_argument("--note", action="append", help="a line to show in the report (repeatable)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scstrata-score", description="Score which layer of a served model serves a task."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate a data set with known ground truth")
    sim.add_argument("--genes", required=True, help="TSV with a gene_name column, or one a line")
    sim.add_argument("--out", required=True, help="output .h5ad")
    sim.add_argument(
        "--kind", choices=["trajectory", "branching", "perturbation"], default="trajectory"
    )
    sim.add_argument("--n-cells", type=int, default=600, help="cells (trajectory kinds)")
    sim.add_argument("--n-perturbations", type=int, default=12)
    sim.add_argument("--cells-per-perturbation", type=int, default=30, help="per state")
    sim.add_argument("--n-control", type=int, default=60, help="control cells per state")
    sim.add_argument("--states", default="Rest,Stim8hr,Stim48hr", help="comma list")
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=_simulate)

    traj = sub.add_parser("trajectory", help="score every layer on a trajectory data set")
    _sweep_arguments(traj)
    traj.add_argument("--time-key", default="time", help="obs column with time points")
    traj.add_argument(
        "--subsample",
        type=int,
        default=None,
        help="score a seeded random subsample of this many cells (default: all cells)",
    )
    traj.add_argument("--subsample-seed", type=int, default=0, help="seed of --subsample")
    traj.set_defaults(func=_trajectory)

    pert = sub.add_parser("perturbation", help="score every layer on a Perturb-seq data set")
    _sweep_arguments(pert)
    pert.add_argument("--perturbation-key", default="perturbation", help="obs column")
    pert.add_argument("--state-key", default="state", help="obs column of contexts, or 'none'")
    pert.add_argument("--control", default="non-targeting", help="label of control cells")
    pert.add_argument("--min-cells", type=int, default=5, help="cells per perturbation")
    pert.add_argument("--n-top-genes", type=int, default=500, help="top genes by |Welch t|")
    pert.add_argument("--n-permutations", type=int, default=100, help="label shuffles")
    pert.add_argument(
        "--centre",
        choices=["none", "control"],
        default="none",
        help="subtract the control mean embedding before cosine (default: the study's none)",
    )
    pert.set_defaults(func=_perturbation)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scstrata-score``; returns the exit status.

    A failure (a bad file, column, key or request, an unreachable service) is one line on
    stderr and exit status 2; ``--debug`` shows the traceback instead.
    """
    args = _parser().parse_args(argv)
    try:
        if args.func is not _simulate:
            apply_threads()  # SCSTRATA_THREADS, else the CPUs this process may use
        return int(args.func(args))
    except Exception as err:  # one line for the user; --debug re-raises for the traceback
        if getattr(args, "debug", False):
            raise
        print(f"scstrata-score {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, ValueError | OSError | KeyError):
        text = f"{type(err).__name__}: {text}"
    return text + " (--debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
