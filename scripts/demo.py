"""`make demo`: the main job end to end on a laptop-sized, RANDOM-WEIGHT model.

1. fabricate (once, seeded) a small checkpoint in the family's official layout (default
   scFoundation over its real 19,264-gene vocabulary) — random demo weights, so the scores
   say nothing biological;
2. start the service on it (`scstrata serve`, loopback);
3. simulate a trajectory data set over the model's own gene names;
4. sweep every layer through the client and score it with baselines and bootstrap CIs
   (`scstrata-score trajectory`);
5. write the report and stop the service.

    python scripts/demo.py [--family scfoundation|tahoe|geneformer|scgpt] [--out demo-output]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scstrata_scoring.cli import main as score_main
from scstrata_scoring.simulate import simulate_trajectory
from scstrata_service.families import FAMILIES, fabricate, load
from scstrata_service.launcher import running_service

NOTE = (
    "The demo model has RANDOM weights in the family's real checkpoint layout: these scores "
    "exercise the pipeline and say nothing about biology. Serve a real checkpoint (README: "
    "'Serving a real checkpoint') to measure a model."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="scfoundation")
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap draws for the CIs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out: Path = args.out
    model = f"{args.family}-demo"
    start = time.perf_counter()

    checkpoint = out / f"checkpoint-{args.family}"
    if not (checkpoint / ".fabricated").is_file():
        print(f"[demo] fabricating a random-weight {args.family} checkpoint in {checkpoint}")
        fabricate(args.family, checkpoint, hidden=64, n_layers=6, n_heads=4, seed=args.seed)
        (checkpoint / ".fabricated").write_text("random demo weights\n")
    genes = load(args.family, "demo", checkpoint, device="cpu").known_genes()

    data = out / f"trajectory-{args.family}.h5ad"
    simulate_trajectory(genes, n_cells=args.cells, seed=args.seed).write_h5ad(data)
    print(f"[demo] simulated {args.cells} cells over {len(genes)} genes -> {data}")

    print("[demo] starting the service ...")
    with running_service([f"{model}={args.family}:{checkpoint}"]) as url:
        print(f"[demo] service ready at {url}; sweeping all layers")
        code = score_main([
            "trajectory", "--url", url, "--model", model, "--data", str(data),
            "--time-key", "time", "--layers", "all", "--n-boot", str(args.n_boot),
            "--out", str(out / f"report-{args.family}"), "--note", NOTE,
        ])  # fmt: skip
    report = out / f"report-{args.family}" / "report.html"
    print(f"[demo] service stopped; report: {report} ({time.perf_counter() - start:.0f} s)")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
