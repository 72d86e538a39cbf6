"""Server CPU of one binary /embed reply at the real size: before and after the raw npz path.

Before: the service base64-encoded the .npz into a JSON result, BentoML wrote the JSON, and
the middleware parsed it back and decoded the base64 (on the event loop). Now: the .npz bytes
are made once, on the dispatch's thread, and written as they are (service.reply_for).

    python bench/npz_reply.py                   # 256 cells x 13 layers x 3,072 dims (41 MB)
    python bench/npz_reply.py --cells 1000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pybase64

from scstrata_service.engine import JobResult
from scstrata_service.schemas import EmbedResult
from scstrata_service.service import encode_npz


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=256)
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--dim", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    layers = {
        k: rng.standard_normal((args.cells, args.dim), dtype=np.float32) for k in range(args.layers)
    }
    result = JobResult(outputs=[layers], unmapped_genes=["X"] * 10)

    def before() -> bytes:
        wrapped = EmbedResult(
            model="m",
            pooling="official",
            n_cells=args.cells,
            dim=args.dim,
            npz=pybase64.b64encode(encode_npz(result)).decode("ascii"),
            n_unmapped_genes=10,
            unmapped_genes=["X"] * 10,
        )
        body = b"[" + wrapped.model_dump_json().encode() + b"]"  # BentoML's reply
        return pybase64.b64decode(json.loads(body)[0]["npz"])  # the middleware's unwrapping

    def after() -> bytes:
        return encode_npz(result)

    assert before() == after()
    old, new = best_of(before, args.repeats), best_of(after, args.repeats)
    size = len(after()) / 1e6
    print(
        f"{args.cells} cells x {args.layers} layers x {args.dim} dims ({size:.0f} MB .npz): "
        f"before {old:.3f} s, after {new:.3f} s of server CPU per reply; ratio {old / new:.1f}x"
    )
    return {"before_s": old, "after_s": new, "mb": size}


if __name__ == "__main__":
    main()
