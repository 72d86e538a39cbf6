"""``scstrata-score``: simulate data, or sweep a served model's layers and score them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import anndata as ad

from .plot import plot_scores
from .report import summary_line, write_report
from .simulate import simulate_trajectory
from .sweep import best_layer, card_field, model_card, pull_layers, score_layers

__all__ = ["main", "parse_layers", "read_genes", "write_report"]


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
    adata = simulate_trajectory(genes, n_cells=args.n_cells, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    print(f"wrote {out}: {adata.n_obs} cells x {adata.n_vars} genes (time key 'time')")
    return 0


def _trajectory(args: argparse.Namespace) -> int:
    adata = ad.read_h5ad(args.data)
    if args.time_key not in adata.obs:
        print(f"error: --time-key {args.time_key!r} is not in obs of {args.data}", file=sys.stderr)
        return 2
    card = model_card(args.url, args.model)
    n_layers = int(card_field(card, "n_layers"))
    embeddings = pull_layers(args.url, args.model, adata, args.layers, pooling=args.pooling)
    df = score_layers(embeddings, adata, args.time_key, n_layers=n_layers, model=args.model)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "scores.csv", index=False)
    plot_scores(df, out / "trajectory.png")
    notes = list(args.note or [])
    if _is_demo(card):
        notes.append(f"Model {args.model!r} runs demo (random) weights: scores are not biology.")
    write_report(df, out, notes)

    best = best_layer(df)
    print(summary_line(best))
    print(f"wrote {out / 'scores.csv'}, {out / 'trajectory.png'}, {out / 'report.html'}")
    return 0


def _is_demo(card: object) -> bool:
    try:
        return bool(card_field(card, "demo_weights"))
    except (KeyError, AttributeError):
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scstrata-score", description="Score which layer of a served model serves a task."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate a trajectory data set over a gene list")
    sim.add_argument("--genes", required=True, help="TSV with a gene_name column, or one a line")
    sim.add_argument("--out", required=True, help="output .h5ad")
    sim.add_argument("--n-cells", type=int, default=600)
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=_simulate)

    traj = sub.add_parser("trajectory", help="score every layer on a trajectory data set")
    traj.add_argument("--url", required=True, help="service URL, e.g. http://localhost:3000")
    traj.add_argument("--model", required=True)
    traj.add_argument("--data", required=True, help=".h5ad with raw counts in X")
    traj.add_argument("--time-key", required=True, help="obs column with time points")
    traj.add_argument("--layers", type=parse_layers, default="all", help="all | K | K1,K2,...")
    traj.add_argument("--pooling", default="official")
    traj.add_argument("--out", required=True, help="output directory")
    traj.add_argument("--note", action="append", help="a line to show in the report (repeatable)")
    traj.set_defaults(func=_trajectory)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scstrata-score``; returns the exit status."""
    args = _parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
