"""HTTP overhead without a GPU: the service's host work against a simulated accelerator.

The service is launched with bench/simulated_accelerator on PYTHONPATH, which turns every
forward pass into a sleep of tokens / rate (no CPU used, the GIL released, as when waiting on
a GPU). What remains is the real HTTP path: client encoding, request validation and
tokenization, BentoML's batching, replies. "In-process" is the simulated accelerator time
alone, so HTTP ÷ in-process is the share of accelerator throughput the HTTP path keeps.
Default rate: scFoundation's 768/12/12 on an H200 in bench/RESULTS.md (1.36M tokens/s).

    python bench/http_overhead.py                 # 4,096 cells, the client shapes of gpu.py
    python bench/http_overhead.py --rate 3e5      # a slower accelerator
    python bench/http_overhead.py --dispatches 1  # BentoML's one dispatch at a time
    python bench/http_overhead.py --shapes 256x8 1000x4   # other client shapes
    python bench/http_overhead.py --full-reply    # every layer of the official pooling

By default the reply is one 32-dim layer (a tiny fabricated model). ``--full-reply`` serves a
fabricated model of scFoundation's real size (768 hidden, 12 blocks) and asks for all 13 layers
of its 3,072-dim ``official`` pooling: 256 cells x 13 x 3,072 float32 = 41 MB per reply, the
real reply of the client's default chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import synthetic_cells
from gpu import HTTP_CLIENTS, http_cells_per_s

from scstrata_service.families import scfoundation
from scstrata_service.families.scfoundation.fabricate import fabricate_checkpoint

SIMULATOR = Path(__file__).parent / "simulated_accelerator"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1.36e6, help="simulated tokens/s")
    parser.add_argument("--cells", type=int, default=4096)
    parser.add_argument("--median", type=int, default=2000)
    parser.add_argument(
        "--dispatches", type=int, default=None, help="SCSTRATA_DISPATCHES (default: the service's)"
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=client_shape,
        default=HTTP_CLIENTS,
        help="client shapes as CELLSxIN_FLIGHT (default: those of gpu.py)",
    )
    parser.add_argument(
        "--full-reply",
        action="store_true",
        help="scFoundation's real size, all 13 layers of the 3,072-dim official pooling",
    )
    args = parser.parse_args(argv)

    size = (
        dict(hidden=768, n_layers=12, n_heads=12)
        if args.full_reply
        else dict(hidden=32, n_layers=2, n_heads=4)
    )
    reply = (
        dict(layers="all", pooling="official") if args.full_reply else dict(layers=-1, pooling="S")
    )
    checkpoint = fabricate_checkpoint(Path(tempfile.mkdtemp()), **size)
    backend = scfoundation.load("bench", checkpoint, device="cpu")
    counts, genes = synthetic_cells(
        backend.tokenizer.vocabulary, args.cells, args.median, 200, 6000, seed=1
    )
    tokens = int(backend.tokenize(counts, genes, {}).offsets[-1])
    accelerator_s = tokens / args.rate
    path = os.pathsep.join(filter(None, [str(SIMULATOR), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "SCSTRATA_SIMULATED_TOKENS_PER_S": str(args.rate)}
    if args.dispatches is not None:
        env["SCSTRATA_DISPATCHES"] = str(args.dispatches)
    rows = http_cells_per_s(
        checkpoint, counts, genes, 1 << 20, env=env, shapes=args.shapes, **reply
    )
    for row in rows:
        row["http_vs_in_process"] = round(accelerator_s / (args.cells / row["cells_per_s"]), 3)
        row["cells_per_s"] = round(row["cells_per_s"], 2)
    dim = backend.card.poolings[reply["pooling"]]
    n_layers = backend.card.n_layers + 1 if reply["layers"] == "all" else 1
    report = {
        "cells": args.cells,
        "tokens": tokens,
        "tokens_per_s": args.rate,
        "reply_floats_per_cell": n_layers * dim,
        "clients": rows,
    }
    print(json.dumps(report, indent=2))
    return report


def client_shape(text: str) -> tuple[int, int]:
    """'256x8' -> (256 cells per request, 8 requests in flight)."""
    try:
        chunk, in_flight = (int(part) for part in text.lower().split("x"))
    except ValueError:
        message = f"{text!r}: expected CELLSxIN_FLIGHT, e.g. 256x8"
        raise argparse.ArgumentTypeError(message) from None
    return chunk, in_flight


if __name__ == "__main__":
    main()
