"""GPU fast-path benchmark (issue: packed variable-length encoder). Prints one JSON object.

On a CUDA host it uses scFoundation's released size (768 dim, 12 blocks, 12 heads, random
weights) and 512 cells whose expressed-gene counts are log-normal with median 2,000 clipped
to [200, 6000]; on CPU a reduced size with the same fields. It measures, in one run:
- the dense matmul peak (bf16 on CUDA, fp32 on CPU),
- the service backend in-process on packed cells: cells/s and share of that peak,
- the same cells through the HTTP service on loopback (concurrent client chunks), and the best
  client shape again with one dispatch at a time (SCSTRATA_DISPATCHES=1) for comparison,
- length-sorted padded batches (masked SDPA) with their padding share,
- the official-style per-cell fp32 path (one cell at a time, torch's encoder layer): the
  encoder alone on tokenized cells, and the official script's whole per-cell loop (its pandas
  preprocessing, gather and pooling as well),
- a Tahoe-X1 1.3B-shaped model (random weights) on packed cells,
- every packed attention kernel, eager and under torch.compile ("variants"), each checked
  against the nested-tensor kernel's output, so the defaults are chosen by measurement.

    python bench/gpu.py            # sizes chosen by device
    python bench/gpu.py --cells 64 --hidden 128 --depth 4 --heads 4   # any size
    python bench/gpu.py --out bench/output/gpu.json                   # also write the JSON
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, flops_per_cell, matmul_peak_tflops, sync, synthetic_cells

from scstrata_client._base import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CONCURRENCY
from scstrata_service.families import scfoundation
from scstrata_service.families.scfoundation.fabricate import fabricate_checkpoint
from scstrata_service.runtime.backend import PackedBackend
from scstrata_service.runtime.batching import plan_batches
from scstrata_service.runtime.device import pick_device

# torch's own (padded) forward of the layer class scFoundation's packed blocks derive from
TORCH_LAYER = torch.nn.TransformerEncoderLayer.forward

GPU_SIZE = dict(cells=512, median=2000, low=200, high=6000, hidden=768, depth=12, heads=12)
CPU_SIZE = dict(cells=96, median=300, low=40, high=900, hidden=128, depth=4, heads=4)
# Tahoe-X1 1.3B's published shape (2048 wide, 24 blocks, 16 heads, context 2048) on CUDA;
# a reduced shape on CPU. Random weights either way.
TAHOE_GPU = dict(cells=128, median=1500, low=200, high=2047, hidden=2048, depth=24, heads=16)
TAHOE_CPU = dict(cells=48, median=300, low=40, high=900, hidden=128, depth=4, heads=4)


def tahoe_packed(device: torch.device, peak: float, kernels: list[tuple[str, bool]]) -> dict:
    """Packed in-process throughput of a Tahoe-X1-shaped model (the study's 1.3B on CUDA),
    with the default kernel and any others named in ``kernels`` ((attention, compile) pairs)."""
    from scstrata_service.families import tahoe
    from scstrata_service.families.tahoe.fabricate import fabricate_checkpoint as fabricate_tahoe

    size = TAHOE_GPU if device.type == "cuda" else TAHOE_CPU
    folder = Path(tempfile.mkdtemp(prefix="scstrata-bench-tahoe-"))
    fabricate_tahoe(
        folder,
        hidden=size["hidden"],
        n_layers=size["depth"],
        n_heads=size["heads"],
        vocab_genes=8000,
        max_length=2048,
    )
    backend = tahoe.load("tahoe-bench", folder)
    counts, genes = synthetic_cells(
        backend.known_genes(), size["cells"], size["median"], size["low"], size["high"]
    )
    cells = backend.tokenize(counts, genes, {})
    flops = flops_per_cell(cells.lengths, size["hidden"], size["depth"]).sum()
    report = {
        "model": {k: size[k] for k in ("hidden", "depth", "heads")},
        "cells": size["cells"],
        "tokens_per_cell_median": float(np.median(cells.lengths)),
    }
    default = (backend.policy.attention, backend.policy.compile_blocks)
    for attention, compile_blocks in dict.fromkeys([default, *kernels]):
        backend.policy = dataclasses.replace(
            backend.policy, attention=attention, compile_blocks=compile_blocks
        )
        backend.embed(cells, [size["depth"]], ["official"])  # compiles, if compiling
        seconds = best_time(lambda: backend.embed(cells, [size["depth"]], ["official"]), device)
        key = "default" if (attention, compile_blocks) == default else "kernel"
        report[key] = {
            "attention": attention,
            "compile": compile_blocks,
            "cells_per_s": round(size["cells"] / seconds, 2),
            "share_of_peak": round(flops / seconds / 1e12 / peak, 4),
        }
    return report


def budget_sweep(
    checkpoint: Path, cells, device: torch.device, flops: float, peak: float, kernel
) -> list:
    """Cells/s of one kernel at several token budgets (tokens per forward pass)."""
    attention, compile_blocks = kernel
    backend = scfoundation.load(
        "budget", checkpoint, attention=attention, compile_blocks=compile_blocks
    )
    depth, rows = backend.card.n_layers, []
    default = backend.max_tokens
    for budget in sorted({default, *(b for b in (1 << 18, 1 << 19) if b < default)}):
        backend.policy = dataclasses.replace(backend.policy, max_tokens=budget)
        seconds = best_time(lambda: backend.embed(cells, [depth], ["S"]), device, repeat=2)
        rows.append(
            {
                "max_tokens": budget,
                "passes": len(plan_batches(cells.lengths, budget)),
                "cells_per_s": round(cells.n_cells / seconds, 2),
                "share_of_peak": round(flops / seconds / 1e12 / peak, 4),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def profile_kernels(checkpoint: Path, cells, device: torch.device, kernel, path: Path) -> None:
    """Write the kernels of one pass, by device time, to ``path`` (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    attention, compile_blocks = kernel
    backend = scfoundation.load(
        "profile", checkpoint, attention=attention, compile_blocks=compile_blocks
    )
    depth = backend.card.n_layers
    backend.embed(cells, [depth], ["S"])  # warm-up (and compile)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        backend.embed(cells, [depth], ["S"])
        sync(device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)
    path.write_text(f"kernel: attention={attention} compile={compile_blocks}\n{table}\n")


def fastest_kernel(rows: list) -> tuple[str, bool] | None:
    """The fastest variant whose output agrees with the first one (bf16: within 5%)."""
    good = [r for r in rows if "error" not in r and r["max_rel_diff_vs_first"] < 0.05]
    if not good:
        return None
    best = max(good, key=lambda r: r["cells_per_s"])
    return best["attention"], best["compile"]


def padded_pass(backend: PackedBackend, cells, max_tokens: int) -> tuple[float, float]:
    """Embed with length-sorted *padded* batches; return (seconds, padding share)."""
    enc, device, dtype = backend.encoder, backend.device, backend.policy.compute_dtype
    lengths = cells.lengths
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    for end in range(1, len(order) + 1):  # longest first: a batch costs len * its first length
        if end == len(order) or (end + 1 - start) * lengths[order[start]] > max_tokens:
            batches.append(order[start:end])
            start = end
    padded_slots = sum(len(b) * int(lengths[b[0]]) for b in batches)

    def run() -> None:
        for batch in batches:
            n = int(lengths[batch[0]])
            values = torch.zeros(len(batch), n)
            positions = torch.full((len(batch), n), enc.config.seq_len, dtype=torch.long)
            keep = torch.zeros(len(batch), n, dtype=torch.bool)
            for row, cell in enumerate(batch):
                s, e = cells.offsets[cell], cells.offsets[cell + 1]
                values[row, : e - s] = torch.from_numpy(cells.values[s:e])
                positions[row, : e - s] = torch.from_numpy(cells.token_ids[s:e])
                keep[row, : e - s] = True
            values, positions, keep = values.to(device), positions.to(device), keep.to(device)
            with torch.inference_mode():
                x = enc.embed_inputs(positions, values, None).to(dtype)
                mask = keep[:, None, None, :]
                for block in enc.encoder.transformer_encoder:
                    x = _padded_block(block, x, mask)
                enc.encoder.norm(x)[torch.arange(len(batch)), keep.sum(1) - 1].float().cpu()

    seconds = best_time(run, device, repeat=2)
    return seconds, 1 - lengths.sum() / padded_slots


def _padded_block(block, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    attn = block.self_attn
    h = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(b, n, 3, h, d // h)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, d)
    x = block.norm1(x + attn.out_proj(mixed))
    return block.norm2(x + block.linear2(F.relu(block.linear1(x))))


def per_cell_fp32(backend: PackedBackend, cells, n: int) -> float:
    """Cells/s of the official script's way: one cell at a time, fp32, torch's encoder layer."""
    enc = copy.deepcopy(backend.encoder).float()
    device = backend.device

    def run() -> None:
        with torch.no_grad():
            for cell in range(n):
                s, e = cells.offsets[cell], cells.offsets[cell + 1]
                values = torch.from_numpy(cells.values[s:e])[None].to(device)
                positions = torch.from_numpy(cells.token_ids[s:e])[None].to(device)
                x = enc.embed_inputs(positions, values, None)
                pad = torch.zeros(1, e - s, dtype=torch.bool, device=device)
                for block in enc.encoder.transformer_encoder:
                    x = TORCH_LAYER(block, x, src_key_padding_mask=pad)
                enc.encoder.norm(x)[:, -1].cpu()

    return n / best_time(run, device, repeat=1)


def gather_like_script(data: torch.Tensor, keep: torch.Tensor, pad_id: int):
    """The official script's gather of the kept entries, by its method: rank the kept positions
    first (position weights built from a Python list on every call, as it does), take the top
    ``max kept`` of the row padded with ``pad_id``, and mark padding by value."""
    width = int(keep.sum(1).max())  # a host sync, as in the script
    pad = torch.full((data.shape[0], width), pad_id, device=data.device, dtype=data.dtype)
    padded = torch.cat([data, pad], 1)
    weights = torch.tensor(
        [(i + 1) * 20000 for i in range(keep.shape[1], 0, -1)], device=keep.device
    )
    score = torch.where(keep, 0.0, float("-inf")) + weights
    score = torch.cat([score, torch.ones(keep.shape[0], width, device=keep.device)], 1)
    gathered = torch.gather(padded, 1, score.topk(width).indices)
    return gathered, gathered == pad_id


def official_script_per_cell(backend: PackedBackend, counts, n: int) -> float:
    """Cells/s of the official embedding script's whole per-cell loop, fp32: each cell's row of
    the dense cells x 19,264-gene table (pandas, as the script holds it) normalised with pandas
    and listed into a 19,266-value tensor, moved to the device, gathered, embedded, run through
    torch's encoder layers and pooled four ways, one cell at a time. ``per_cell_fp32`` times the
    encoder part alone on pre-tokenized cells."""
    import pandas as pd

    enc = copy.deepcopy(backend.encoder).float()
    device, config = backend.device, backend.encoder.config
    table = pd.DataFrame(counts[:n].toarray(), columns=backend.tokenizer.vocabulary)

    def run() -> None:
        with torch.no_grad():
            for cell in range(n):
                row = table.iloc[cell, :]
                total = row.sum()
                listed = np.log1p(row / total * 1e4).tolist()  # raw counts ('t4': T token 4)
                x = torch.tensor(listed + [4.0, float(np.log10(total))])[None].to(device)
                gene_ids = torch.arange(x.shape[1], device=device)[None]
                keep = x > 0
                values, padding = gather_like_script(x, keep, config.pad_token_id)
                positions, _ = gather_like_script(gene_ids, keep, config.pad_token_id)
                h = enc.embed_inputs(positions, values, None)
                for block in enc.encoder.transformer_encoder:
                    h = TORCH_LAYER(block, h, src_key_padding_mask=padding)
                h = enc.encoder.norm(h)
                genes_only = h[:, :-2, :]
                pooled = [h[:, -1], h[:, -2], genes_only.max(1).values, genes_only.mean(1)]
                torch.cat(pooled, 1).cpu().numpy()

    return n / best_time(run, device, repeat=1)


# (cells per request, requests in flight): small chunks with many in flight, the client's
# defaults, and its defaults until 2026-11-28 (1,000 cells, 4 in flight)
HTTP_CLIENTS = [(128, 16), (DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CONCURRENCY), (1000, 4)]


def http_cells_per_s(
    checkpoint: Path,
    counts,
    genes,
    max_tokens: int,
    kernel: tuple[str, bool] | None = None,
    env: dict[str, str] | None = None,
    shapes: list[tuple[int, int]] = HTTP_CLIENTS,
    layers: int | str = -1,
    pooling: str = "S",
) -> list[dict]:
    """Steady-state cells/s through the HTTP service on loopback, for each client shape
    (cells per chunk, chunks in flight): request encoding, tokenization and replies overlap the
    accelerator's work. ``layers`` and ``pooling`` set the reply's size."""
    from scstrata_client import Client
    from scstrata_service.launcher import running_service

    env = {**(env or {}), "SCSTRATA_MAX_TOKENS": str(max_tokens)}
    if kernel is not None:
        env["SCSTRATA_ATTENTION"], env["SCSTRATA_COMPILE"] = kernel[0], str(int(kernel[1]))
    rows = []
    with running_service([f"bench=scfoundation:{checkpoint.parent}"], env=env) as url:
        for chunk, in_flight in shapes:
            with Client(
                url,
                chunk_size=chunk,
                max_concurrency=in_flight,
                progress=False,
                cache=False,
                transport_format="npz",  # binary cells and replies, as for large chunks
            ) as client:

                def run(cells=counts, client: Client = client) -> int:
                    out = client.embed(cells, genes, model="bench", layers=layers, pooling=pooling)
                    return len(next(iter(out.values())))

                warm_up = counts[: 2 * chunk * in_flight]

                run(warm_up)  # CUDA context, kernels, BentoML's batching model
                before = server_counters(url)
                start = time.perf_counter()
                done = run()
                seconds = time.perf_counter() - start
                after = server_counters(url)
            dispatches = after["dispatches"] - before["dispatches"]
            rows.append(
                {
                    "chunk": chunk,
                    "in_flight": in_flight,
                    "cells_per_s": done / seconds,
                    "dispatches": int(dispatches),
                    # share of the wall time the server spent inside its embed dispatches
                    "server_busy_share": round((after["busy_s"] - before["busy_s"]) / seconds, 3),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def server_counters(url: str) -> dict[str, float]:
    """Dispatches so far and seconds spent embedding them, from the service's /metrics."""
    import httpx

    totals = {"dispatches": 0.0, "busy_s": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_count"):
            totals["dispatches"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("scstrata_embed_seconds_sum"):
            totals["busy_s"] += float(line.rsplit(" ", 1)[1])
    return totals


# (attention kernel, torch.compile) pairs measured in-process besides the default
CUDA_VARIANTS = [
    ("nested", False),
    ("varlen", False),
    ("cudnn", False),
    ("varlen", True),
]
CPU_VARIANTS = [("per_cell", False), ("per_cell", True)]


def variants(checkpoint: Path, cells, device: torch.device, flops: float, peak: float) -> list:
    """In-process throughput of each kernel, eager and compiled; each is checked against the
    first variant's pooled output (relative L2 error per cell, max over cells)."""
    rows, reference = [], None
    for attention, compile_blocks in CUDA_VARIANTS if device.type == "cuda" else CPU_VARIANTS:
        row: dict = {"attention": attention, "compile": compile_blocks}
        try:
            pooled, timing = measure_variant(checkpoint, cells, device, attention, compile_blocks)
            row["share_of_peak"] = round(flops / timing.pop("seconds") / 1e12 / peak, 4)
            row.update(timing)
            reference = pooled if reference is None else reference
            error = np.linalg.norm(pooled - reference, axis=1) / np.linalg.norm(reference, axis=1)
            row["max_rel_diff_vs_first"] = float(error.max())
        except Exception as err:  # a kernel missing from this torch build: report, go on
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def measure_variant(
    checkpoint: Path, cells, device: torch.device, attention: str, compile_blocks: bool
) -> tuple[np.ndarray, dict]:
    backend = scfoundation.load(
        "variant", checkpoint, attention=attention, compile_blocks=compile_blocks
    )
    depth = backend.card.n_layers
    start = time.perf_counter()
    pooled = backend.embed(cells, [depth], ["S"])["S"][depth]
    sync(device)
    first_call = time.perf_counter() - start  # includes compiling
    seconds = best_time(lambda: backend.embed(cells, [depth], ["S"]), device, repeat=2)
    return pooled, {
        "first_call_s": round(first_call, 2),
        "cells_per_s": round(cells.n_cells / seconds, 2),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    device = pick_device(os.environ.get("SCSTRATA_DEVICE"))
    size = dict(GPU_SIZE if device.type == "cuda" else CPU_SIZE)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, value in size.items():
        parser.add_argument(f"--{key}", type=int, default=value)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--baseline-cells", type=int, default=64)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-tahoe", action="store_true")
    parser.add_argument("--skip-variants", action="store_true")
    parser.add_argument("--http-cells", type=int, default=None, help="default: 8x --cells")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--profile", type=Path, help="write the fastest kernel's profile here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    peak, peak_kind = matmul_peak_tflops(device)
    folder = Path(tempfile.mkdtemp(prefix="scstrata-bench-"))
    checkpoint = fabricate_checkpoint(
        folder, hidden=args.hidden, n_layers=args.depth, n_heads=args.heads
    )
    backend = scfoundation.load("bench", checkpoint, max_tokens=args.max_tokens)
    max_tokens = backend.max_tokens
    counts, genes = synthetic_cells(
        backend.tokenizer.vocabulary, args.cells, args.median, args.low, args.high
    )
    start = time.perf_counter()
    cells = backend.tokenize(counts, genes, {})
    tokenize_s = time.perf_counter() - start
    flops = flops_per_cell(cells.lengths, args.hidden, args.depth).sum()

    def rate(seconds: float) -> dict:
        return {
            "cells_per_s": round(args.cells / seconds, 2),
            "tflops": round(flops / seconds / 1e12, 4),
            "share_of_peak": round(flops / seconds / 1e12 / peak, 4),
        }

    packed_s = best_time(lambda: backend.embed(cells, [args.depth], ["official"]), device)
    padded_s, padding_share = padded_pass(backend, cells, max_tokens)
    n_base = min(args.baseline_cells, args.cells)
    baseline = per_cell_fp32(backend, cells, n_base)
    script = official_script_per_cell(backend, counts, n_base)
    # cells/s depend on which cells were timed; FLOP rates compare the paths fairly
    base_tflops = (
        baseline
        / n_base
        * flops_per_cell(cells.lengths[:n_base], args.hidden, args.depth).sum()
        / 1e12
    )
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": {"hidden": args.hidden, "blocks": args.depth, "heads": args.heads},
        "cells": args.cells,
        "tokens_per_cell": {
            "median": float(np.median(cells.lengths)),
            "min": int(cells.lengths.min()),
            "max": int(cells.lengths.max()),
        },
        "gflop_per_cell": round(flops / args.cells / 1e9, 3),
        "peak_tflops": round(peak, 3),
        "peak_kind": peak_kind,
        "max_tokens_per_pass": max_tokens,
        "forward_passes": len(plan_batches(cells.lengths, max_tokens)),
        "attention": backend.policy.attention,
        "tokenize_cells_per_s": round(args.cells / tokenize_s, 1),
        "packed_in_process": rate(packed_s),
        "padded_length_sorted": {**rate(padded_s), "padding_share": round(padding_share, 4)},
        "packed_padding_share": 0.0,
        "official_per_cell_fp32": {
            "cells_timed": n_base,
            "cells_per_s_of_timed": round(baseline, 2),
            "tflops": round(base_tflops, 4),
            "cells_per_s_at_bench_mix": round(base_tflops * 1e12 / (flops / args.cells), 2),
        },
        "packed_vs_padded": round(padded_s / packed_s, 3),
        "packed_vs_per_cell_fp32": round(flops / packed_s / 1e12 / base_tflops, 2),
        # the script's whole loop: its pandas preprocessing and gather besides the encoder
        "official_script_per_cell": {
            "cells_timed": n_base,
            "cells_per_s_of_timed": round(script, 2),
            "tflops": round(base_tflops * script / baseline, 4),
            "cells_per_s_at_bench_mix": round(
                base_tflops * script / baseline * 1e12 / (flops / args.cells), 2
            ),
        },
        "packed_vs_official_script": round(
            flops / packed_s / 1e12 / (base_tflops * script / baseline), 2
        ),
    }
    report["compile_blocks"] = backend.policy.compile_blocks
    fastest = None
    if not args.skip_variants:
        report["variants"] = variants(checkpoint, cells, device, flops, peak)
        fastest = fastest_kernel(report["variants"])
        report["fastest_kernel"] = fastest
        if fastest is not None:
            report["token_budgets"] = budget_sweep(checkpoint, cells, device, flops, peak, fastest)
            if args.profile:
                profile_kernels(checkpoint, cells, device, fastest, args.profile)
    if not args.skip_http:
        # long enough that filling and draining the pipeline (the first chunk's trip before
        # the accelerator starts, the last reply after it stops) weigh little, as in a sweep
        n_http = args.http_cells or 8 * args.cells
        http_counts, http_genes = synthetic_cells(
            backend.tokenizer.vocabulary, n_http, args.median, args.low, args.high, seed=1
        )
        http_lengths = backend.tokenize(http_counts, http_genes, {}).lengths
        http_flops = flops_per_cell(http_lengths, args.hidden, args.depth).sum()
        clients = http_cells_per_s(checkpoint, http_counts, http_genes, max_tokens, fastest)
        for row in clients:
            row["tflops"] = round(row["cells_per_s"] / n_http * http_flops / 1e12, 4)
            row["share_of_peak"] = round(row["tflops"] / peak, 4)
            row["cells_per_s"] = round(row["cells_per_s"], 2)
        best_client = max(clients, key=lambda r: r["tflops"])
        http, http_tflops = best_client["cells_per_s"], best_client["tflops"]
        in_process_tflops = flops / packed_s / 1e12
        if fastest is not None:  # the server ran the fastest kernel: compare with its row
            row = next(
                r
                for r in report["variants"]
                if "error" not in r and (r["attention"], r["compile"]) == tuple(fastest)
            )
            in_process_tflops = row["share_of_peak"] * peak
        report["http_loopback"] = {
            "kernel": fastest or [backend.policy.attention, report["compile_blocks"]],
            "cells": n_http,
            "clients": clients,
            "best": {"chunk": best_client["chunk"], "in_flight": best_client["in_flight"]},
            "cells_per_s": http,
            "tflops": http_tflops,
            "share_of_peak": best_client["share_of_peak"],
        }
        # FLOP rates, not cells/s: the HTTP run sends other (more) cells of the same law
        report["http_vs_in_process"] = round(http_tflops / in_process_tflops, 3)
        # the same best shape with BentoML's one dispatch at a time: what dispatch.py buys
        (alone,) = http_cells_per_s(
            checkpoint,
            http_counts,
            http_genes,
            max_tokens,
            fastest,
            env={"SCSTRATA_DISPATCHES": "1"},
            shapes=[(best_client["chunk"], best_client["in_flight"])],
        )
        alone_tflops = alone["cells_per_s"] / n_http * http_flops / 1e12
        report["http_one_dispatch_at_a_time"] = {
            **alone,
            "cells_per_s": round(alone["cells_per_s"], 2),
            "http_vs_in_process": round(alone_tflops / in_process_tflops, 3),
        }
    if not args.skip_tahoe:
        report["tahoe_packed_in_process"] = tahoe_packed(device, peak, [fastest] if fastest else [])
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
