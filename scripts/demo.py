"""`make demo`: the main job end to end on a laptop-sized, RANDOM-WEIGHT scFoundation.

1. fabricate (once, seeded) a small checkpoint in scFoundation's official layout over the
   real 19,264-gene vocabulary — random demo weights, so the scores say nothing biological;
2. start the service on it (`scstrata serve`, loopback);
3. simulate a trajectory data set over the same gene symbols;
4. sweep every layer through the client and score it (`scstrata-score trajectory`);
5. write the report and stop the service.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad

from scstrata_scoring.cli import main as score_main
from scstrata_scoring.cli import read_genes
from scstrata_scoring.simulate import simulate_trajectory
from scstrata_service.families.scfoundation.checkpoint import CHECKPOINT_FILE, VOCABULARY_FILE
from scstrata_service.families.scfoundation.fabricate import fabricate_checkpoint
from scstrata_service.launcher import running_service

MODEL = "scfoundation-demo"
NOTE = (
    "The demo model has RANDOM weights in scFoundation's real checkpoint layout: these "
    "scores exercise the pipeline and say nothing about biology. Serve a real checkpoint "
    "(README: 'Serving a real checkpoint') to measure a model."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out: Path = args.out
    start = time.perf_counter()

    checkpoint_dir = out / "checkpoint"
    if not (checkpoint_dir / CHECKPOINT_FILE).is_file():
        print(
            f"[demo] fabricating a random-weight scFoundation-layout checkpoint in {checkpoint_dir}"
        )
        fabricate_checkpoint(checkpoint_dir, hidden=64, depth=6, heads=4, seed=args.seed)

    data = out / "trajectory.h5ad"
    genes = read_genes(checkpoint_dir / VOCABULARY_FILE)
    simulate_trajectory(genes, n_cells=args.cells, seed=args.seed).write_h5ad(data)
    print(f"[demo] simulated {ad.read_h5ad(data, backed='r').n_obs} cells -> {data}")

    print("[demo] starting the service ...")
    with running_service([f"{MODEL}=scfoundation:{checkpoint_dir}"]) as url:
        print(f"[demo] service ready at {url}; sweeping all layers")
        code = score_main(
            [
                "trajectory",
                "--url",
                url,
                "--model",
                MODEL,
                "--data",
                str(data),
                "--time-key",
                "time",
                "--layers",
                "all",
                "--out",
                str(out / "report"),
                "--note",
                NOTE,
            ]
        )
    print(
        f"[demo] service stopped; report: {out / 'report' / 'report.html'} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
