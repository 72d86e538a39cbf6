"""``scstrata-score``: simulate data, or sweep served models' layers and score them.

``trajectory`` and ``perturbation`` pull every layer of each ``--model`` through the client
(cached by the client, see ``--cache``), score the layers and the baselines, and write to ``--out``:
``scores.csv`` (tidy, :data:`~scstrata_scoring.sweep.SCORE_COLUMNS`), ``summary.csv``
(:data:`~scstrata_scoring.sweep.SUMMARY_COLUMNS`), ``<task>.png`` and ``report.html``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import anndata as ad

from .data import read_perturbation, read_trajectory
from .plot import plot_scores
from .pull import card_field, model_card, pull_layers
from .report import summary_line, write_report
from .simulate import simulate_trajectory
from .simulate_perturbation import simulate_perturbation
from .sweep import LayerSet, SweepResult, score_perturbation, score_trajectory
from .threads import apply_threads

__all__ = ["main", "parse_layers", "read_genes"]


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


def _trajectory(args: argparse.Namespace) -> int:
    try:
        adata = read_trajectory(args.data, args.time_key, counts_layer=args.counts_layer)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    layer_sets, notes = _pull(args, adata)
    result = score_trajectory(
        layer_sets,
        adata,
        args.time_key,
        baselines=not args.no_baselines,
        n_boot=args.n_boot,
        seed=args.seed,
        subsample=args.subsample,
        subsample_seed=args.subsample_seed,
    )
    return _write(args, result, "trajectory", notes)


def _perturbation(args: argparse.Namespace) -> int:
    state_key = None if args.state_key.lower() == "none" else args.state_key
    try:
        adata = read_perturbation(
            args.data, args.perturbation_key, state_key, args.control, args.counts_layer
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    layer_sets, notes = _pull(args, adata)
    result = score_perturbation(
        layer_sets,
        adata,
        args.perturbation_key,
        state_key,
        args.control,
        baselines=not args.no_baselines,
        min_cells=args.min_cells,
        n_top_genes=args.n_top_genes,
        n_permutations=args.n_permutations,
        n_boot=args.n_boot,
        seed=args.seed,
        centre=args.centre,
    )
    if result.scores.empty:
        print("error: no context had enough perturbations to score", file=sys.stderr)
        return 2
    return _write(args, result, "perturbation", notes)


def _pull(args: argparse.Namespace, adata: ad.AnnData) -> tuple[list[LayerSet], list[str]]:
    layer_sets, notes = [], list(args.note or [])
    for model in dict.fromkeys(args.model):
        card = model_card(args.url, model)
        embeddings = pull_layers(
            args.url,
            model,
            adata,
            args.layers,
            pooling=args.pooling,
            cache=not args.no_cache,
            cache_dir=args.cache,
        )
        layer_sets.append(LayerSet(model, int(card_field(card, "n_layers")), embeddings))
        if _card_get(card, "demo_weights"):
            notes.append(f"Model {model!r} runs demo (random) weights: scores are not biology.")
    return layer_sets, notes


def _write(args: argparse.Namespace, result: SweepResult, task: str, notes: list[str]) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.scores.to_csv(out / "scores.csv", index=False)
    result.summary.to_csv(out / "summary.csv", index=False)
    plot = plot_scores(result.scores, out / f"{task}.png")
    report = write_report(
        result.scores,
        out,
        notes,
        summary=result.summary,
        plot_name=plot.name,
        title=f"Layer scores: {task}",
    )
    for row in result.summary.to_dict("records"):
        print(summary_line(row))
    print(f"wrote {out / 'scores.csv'}, {out / 'summary.csv'}, {plot}, {report}")
    return 0


def _card_get(card: object, field: str) -> object:
    try:
        return card_field(card, field)
    except (KeyError, AttributeError):
        return None


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="service URL, e.g. http://localhost:3000")
    parser.add_argument(
        "--model", required=True, action="append", help="served model (repeat for several)"
    )
    parser.add_argument("--data", required=True, help=".h5ad with raw counts")
    parser.add_argument("--counts-layer", help="take counts from this layer instead of X")
    parser.add_argument("--layers", type=parse_layers, default="all", help="all | K | K1,K2,...")
    parser.add_argument("--pooling", default="official")
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
    """Entry point of ``scstrata-score``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.func is not _simulate:
        try:
            apply_threads()  # SCSTRATA_THREADS, else the CPUs this process may use
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
