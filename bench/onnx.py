"""scFoundation on ONNX Runtime vs torch, on the same cells, on CPU. Prints one JSON object.

(a) throughput: torch on packed cells / ORT on padded batches (final layer, official pooling)
(b) ORT early exit: layer-1 request (depth-1 graph) / final-layer request (depth-L graph)

    python bench/onnx.py [--cells 200] [--hidden 128] [--depth 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# This file is named onnx.py: take its folder off the front of the path (where Python puts a
# script's folder) so that `import onnx` inside the exporter finds the real package, and
# append it at the end for `common`.
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here] + [str(_here)]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from common import best_time, synthetic_cells  # noqa: E402

from scstrata_service.families import fabricate, scfoundation  # noqa: E402
from scstrata_service.runtime.batching import plan_batches  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--median-genes", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="scstrata-onnx-bench-"))
    folder = fabricate(
        "scfoundation", work / "ckpt", hidden=args.hidden, n_layers=args.depth, n_heads=args.heads
    )
    backends = {
        runtime: scfoundation.load(
            "bench", folder, device="cpu", runtime=runtime, onnx_cache_dir=work / "onnx"
        )
        for runtime in ("torch", "onnx")
    }
    torch_backend, onnx_backend = backends["torch"], backends["onnx"]
    counts, genes = synthetic_cells(
        torch_backend.known_genes(),
        args.cells,
        args.median_genes,
        args.median_genes // 4,
        args.median_genes * 3,
    )
    tokens = torch_backend.tokenize(counts, genes, {})
    L = torch_backend.card.n_layers
    cpu = torch.device("cpu")

    def timed(backend, layers) -> float:
        # best_time warms up once, which also exports / loads the graph for this depth
        return best_time(lambda: backend.embed(tokens, layers, ["official"]), cpu, args.repeat)

    seconds = {
        "torch_final": timed(torch_backend, [L]),
        "onnx_final": timed(onnx_backend, [L]),
        "torch_layer_1": timed(torch_backend, [1]),
        "onnx_layer_1": timed(onnx_backend, [1]),
    }
    real = padded = 0
    for batch in plan_batches(tokens.lengths, onnx_backend.max_tokens):
        lengths = tokens.lengths[batch]
        real += int(lengths.sum())
        padded += int(len(batch) * lengths.max())
    report = {
        "family": "scfoundation",
        "model": {"hidden": args.hidden, "blocks": L, "heads": args.heads},
        "cells": args.cells,
        "tokens": int(tokens.lengths.sum()),
        "tokens_per_cell_median": float(np.median(tokens.lengths)),
        "max_tokens_per_pass": onnx_backend.max_tokens,
        "onnx_padded_slots_over_real_tokens": round(padded / real, 3),
        "threads": {"torch": torch.get_num_threads(), "onnxruntime": "default (all cores)"},
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "providers": onnx_backend.blocks.providers,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "cells_per_s": {k: round(args.cells / v, 1) for k, v in seconds.items()},
        "a_onnx_over_torch_throughput_final": round(
            seconds["torch_final"] / seconds["onnx_final"], 3
        ),
        "b_onnx_layer1_over_final_time": round(seconds["onnx_layer_1"] / seconds["onnx_final"], 3),
        "b_expected_if_blocks_dominate": round(1 / L, 3),
        "graphs_exported": sorted(onnx_backend.blocks.exported),
        "when": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
