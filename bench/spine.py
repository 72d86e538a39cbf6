"""Any-layer serving costs, measured in one run on the same cells. Prints one JSON object.

(a) one all-layer request / one final-layer request  (one pass either way: ~1 expected)
(b) one layer-1 request / one final-layer request     (early exit: ~1/L expected)
(c) HTTP throughput / in-process throughput           (serving overhead)

    python bench/spine.py [--family scfoundation] [--cells 200] [--depth 12]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, synthetic_cells

from scstrata_client import Client
from scstrata_service.families import FAMILIES, fabricate, load
from scstrata_service.launcher import running_service


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="scfoundation", choices=sorted(FAMILIES))
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--median-genes", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    folder = fabricate(
        args.family,
        Path(tempfile.mkdtemp(prefix="scstrata-spine-")),
        hidden=args.hidden,
        n_layers=args.depth,
        n_heads=args.heads,
    )
    backend = load(args.family, "bench", folder)
    counts, genes = synthetic_cells(
        backend.known_genes(),
        args.cells,
        args.median_genes,
        args.median_genes // 4,
        args.median_genes * 3,
    )
    device = backend.device
    L = backend.card.n_layers

    def in_process() -> None:
        backend.embed(backend.tokenize(counts, genes, {}), [L], ["official"])

    in_process_s = best_time(in_process, device, args.repeat)
    with (
        running_service([f"bench={args.family}:{folder}"]) as url,
        Client(url, chunk_size=args.cells, progress=False, cache=False) as client,
    ):

        def request(layers) -> float:
            def run() -> None:
                client.embed(counts, genes, model="bench", layers=layers, pooling="official")

            return best_time(run, torch.device("cpu"), args.repeat)

        final_s = request(L)
        all_s = request("all")
        first_s = request(1)
    report = {
        "family": args.family,
        "model": {"hidden": args.hidden, "blocks": L, "heads": args.heads},
        "cells": args.cells,
        "tokens_per_cell_median": float(
            np.median(np.diff(backend.tokenize(counts, genes, {}).offsets))
        ),
        "seconds": {
            "in_process_final": round(in_process_s, 3),
            "http_final": round(final_s, 3),
            "http_all_layers": round(all_s, 3),
            "http_layer_1": round(first_s, 3),
        },
        "a_all_layers_over_final": round(all_s / final_s, 3),
        "b_layer1_over_final": round(first_s / final_s, 3),
        "b_expected_if_blocks_dominate": round(1 / L, 3),
        "c_http_over_in_process_throughput": round(in_process_s / final_s, 3),
        "note": "HTTP times include JSON transport of every requested layer",
        "when": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
