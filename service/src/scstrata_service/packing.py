"""Packed variable-length batches: token-budget planning, packed attention, segment pooling.

A cell is a variable-length token sequence. Instead of padding cells to a common length we
concatenate their tokens ("packing") and restrict attention to each cell's own tokens, so
no compute or memory goes to padding (serving-notes.md: padding wastes most of a GPU).
Linear layers and norms run on the flat ``[tokens, dim]`` tensor; only attention needs the
cell boundaries (``offsets``).
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from scstrata_service.backend import PooledLayers, TokenizedCells

log = logging.getLogger(__name__)

# per_cell: a loop of SDPA calls (CPU default); nested: jagged nested tensors through SDPA;
# varlen / cudnn: the flash / cuDNN kernels called directly on the packed tokens with
# cumulative offsets (CUDA only; no nested-tensor copies or host syncs per block).
ATTENTION_IMPLS = ("per_cell", "nested", "varlen", "cudnn")
CUDA_ONLY_ATTENTION = ("varlen", "cudnn")


class AcceleratorOutOfMemory(RuntimeError):
    """Even a single cell does not fit on the accelerator."""


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (BentoML may set CUDA_VISIBLE_DEVICES on any host: decide in code)."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_attention(device: torch.device) -> str:
    # On an H200 the direct varlen flash call beat jagged nested tensors by 12-14% (no copies of
    # q/k/v, no host syncs) and cuDNN's ragged path by 1.7-1.9x; on CPU nested-tensor SDPA was
    # ~70x slower than a loop of per-cell SDPA calls (bench/RESULTS.md).
    return "varlen" if device.type == "cuda" else "per_cell"


def default_compile(device: torch.device) -> bool:
    # H200: +3.4% and +4.9% cells/s in two runs (beyond run-to-run noise of ~2%), crossing 50%
    # of the bf16 peak; on CPU the compiled blocks were no faster (bench/RESULTS.md).
    return device.type == "cuda"


# What a failed torch.compile raises (Dynamo's and Inductor's errors share this base).
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException,)


def check_attention(impl: str, device: torch.device) -> str:
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if impl in CUDA_ONLY_ATTENTION and device.type != "cuda":
        raise ValueError(
            f"attention {impl!r} needs a CUDA device, this backend runs on {device}; "
            "use 'per_cell' (or leave SCSTRATA_ATTENTION unset)"
        )
    return impl


def default_max_tokens(device: torch.device, hidden_size: int) -> int:
    """Tokens per forward pass: from free accelerator memory on CUDA, a fixed size on CPU."""
    if device.type != "cuda":
        # small passes stay in CPU cache: 4k tokens beat 32k by ~30% in bench/gpu.py
        return 4_096
    free, _total = torch.cuda.mem_get_info(device)
    # Per token, a block keeps roughly 16 hidden-sized bf16 activations alive at its peak
    # (qkv, attention output, 4x FFN, residuals); keep half the free memory in reserve.
    per_token = 16 * hidden_size * 2
    return int(max(4_096, min(1 << 20, free * 0.5 // per_token)))


def plan_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Group cells, longest first, into batches of at most ``max_tokens`` tokens.

    A cell longer than the budget gets a batch of its own. Sorting by length keeps cells of
    similar cost together, which matters for the padded fallback and for load balance.
    """
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start, tokens = 0, 0
    for pos, cell in enumerate(order):
        n = int(lengths[cell])
        if pos > start and tokens + n > max_tokens:
            batches.append(order[start:pos])
            start, tokens = pos, 0
        tokens += n
    if len(order) > start:
        batches.append(order[start:])
    return batches


ForwardFn = Callable[[TokenizedCells], PooledLayers]

# Called after each forward pass with (cells, tokens, padded token slots); set by the service
# to feed its metrics. A context variable keeps concurrent dispatches apart.
pass_observer: ContextVar[Callable[[int, int, int], None] | None] = ContextVar(
    "pass_observer", default=None
)


def embed_in_batches(cells: TokenizedCells, max_tokens: int, forward: ForwardFn) -> PooledLayers:
    """Run ``forward`` over token-budget batches and put the pooled rows back in cell order.

    The next batch is gathered on a helper thread while the current one runs, so the host-side
    work overlaps the accelerator's (a prefetch queue of one).
    """
    results: PooledLayers = {}
    batches = plan_batches(cells.lengths, max_tokens)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scstrata-prefetch") as pool:
        upcoming = pool.submit(cells.select, batches[0]) if batches else None
        for i, batch in enumerate(batches):
            selected = upcoming.result()
            if i + 1 < len(batches):
                upcoming = pool.submit(cells.select, batches[i + 1])
            pooled = _forward_splitting_on_oom(cells, batch, forward, selected)
            for pooling, per_layer in pooled.items():
                out = results.setdefault(pooling, {})
                for layer, rows in per_layer.items():
                    if layer not in out:
                        out[layer] = np.empty((cells.n_cells, rows.shape[1]), dtype=np.float32)
                    out[layer][batch] = rows
    return results


def _forward_splitting_on_oom(
    cells: TokenizedCells,
    batch: np.ndarray,
    forward: ForwardFn,
    selected: TokenizedCells | None = None,
) -> PooledLayers:
    try:
        pooled = forward(selected if selected is not None else cells.select(batch))
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        if len(batch) == 1:
            raise AcceleratorOutOfMemory(
                f"one cell of {int(cells.lengths[batch[0]])} tokens does not fit in "
                "accelerator memory; retry later or lower the service's max tokens per pass"
            ) from None
        log.warning("out of memory on %d cells; splitting the batch and retrying", len(batch))
        half = len(batch) // 2
        first = _forward_splitting_on_oom(cells, batch[:half], forward)
        second = _forward_splitting_on_oom(cells, batch[half:], forward)
        return {
            p: {k: np.concatenate([first[p][k], second[p][k]]) for k in first[p]} for p in first
        }
    observer = pass_observer.get()
    if observer is not None:
        tokens = int(cells.lengths[batch].sum())
        observer(len(batch), tokens, tokens)  # packed: every slot is a real token
    return pooled


@dataclass
class PackedLayout:
    """Cell boundaries of one packed batch, on the device, plus derived index vectors."""

    offsets: torch.Tensor  # [n_cells + 1] int64
    bounds: list[int]  # the same offsets as Python ints, for per-cell loops
    cu_seqlens: torch.Tensor  # the offsets as int32, as the varlen kernels take them
    max_length: int  # the longest cell, known on the host (no device sync to find it)

    @classmethod
    def from_offsets(cls, offsets: np.ndarray, device: torch.device) -> PackedLayout:
        offsets = np.asarray(offsets, dtype=np.int64)
        on_device = torch.as_tensor(offsets, device=device)
        longest = int(np.diff(offsets).max()) if len(offsets) > 1 else 0
        return cls(on_device, offsets.tolist(), on_device.to(torch.int32), longest)

    @property
    def n_cells(self) -> int:
        return len(self.bounds) - 1


def packed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout, impl: str
) -> torch.Tensor:
    """Softmax attention of ``[tokens, heads, head_dim]`` inputs, each cell on its own tokens.

    Goes through one registered operator, so ``torch.compile`` can fuse the dense work around
    it (projections, norms, activations) while attention stays an opaque kernel call.
    """
    check_attention(impl, q.device)
    return _attention_op(q, k, v, layout.offsets, layout.cu_seqlens, layout.max_length, impl)


@torch.library.custom_op("scstrata::packed_attention", mutates_args=())
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_length: int,
    impl: str,
) -> torch.Tensor:
    if impl == "varlen":
        # FlashAttention-2's variable-length kernel reads the packed rows in place (any row
        # stride, so q/k/v stay views of the fused projection).
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_seqlens, max_length, max_length, 0.0, False, False
        )[0]
        return out.contiguous()
    if impl == "cudnn":
        out = torch.ops.aten._cudnn_attention_forward(
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            None,
            cu_seqlens,
            cu_seqlens,
            max_length,
            max_length,
            False,
        )[0]
        return out.contiguous()
    if impl == "nested":

        def nest(t: torch.Tensor) -> torch.Tensor:
            # contiguous first: SDPA rejects strided jagged views (serving-notes.md); the host
            # knows the longest cell, so the nested tensor need not sync to find it
            nested = torch.nested.nested_tensor_from_jagged(
                t.contiguous(), offsets, max_seqlen=max_length
            )
            return nested.transpose(1, 2)

        out = F.scaled_dot_product_attention(nest(q), nest(k), nest(v))
        return out.transpose(1, 2).values().contiguous()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    bounds = offsets.tolist()
    for s, e in itertools.pairwise(bounds):
        # [1, heads, n, head_dim], contiguous: strided inputs fall off SDPA's fused CPU
        # kernel (2.5x slower in bench/RESULTS.md)
        qc, kc, vc = (t[s:e].transpose(0, 1).contiguous()[None] for t in (q, k, v))
        out[s:e] = F.scaled_dot_product_attention(qc, kc, vc)[0].transpose(0, 1)
    return out


@_attention_op.register_fake
def _(q, k, v, offsets, cu_seqlens, max_length, impl):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


@functools.cache
def compiled(fn: Callable) -> Callable:
    """``fn`` under ``torch.compile`` (dynamic token counts), made once per function.

    A block's forward is compiled once for all blocks of a model: parameters are graph
    inputs, and the token count is a symbolic size, so new batch sizes do not recompile.
    """
    return torch.compile(fn, dynamic=True)


def segment_mean(x: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Mean of the rows of ``x`` per segment id (every segment must have a row)."""
    total = torch.zeros(n_segments, x.shape[1], dtype=torch.float32, device=x.device)
    total.index_add_(0, segment, x.float())
    count = torch.bincount(segment, minlength=n_segments).clamp_min(1)
    return total / count.unsqueeze(1)


def segment_max(x: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Max of the rows of ``x`` per segment id (every segment must have a row)."""
    out = torch.full((n_segments, x.shape[1]), -torch.inf, dtype=torch.float32, device=x.device)
    index = segment.unsqueeze(1).expand(-1, x.shape[1])
    return out.scatter_reduce_(0, index, x.float(), reduce="amax", include_self=True)


def gather_rows(pooled: dict[str, dict[int, torch.Tensor]]) -> PooledLayers:
    """Move pooled vectors (the only thing that leaves the device) to host float32 arrays."""
    return {
        p: {k: t.detach().float().cpu().numpy() for k, t in per_layer.items()}
        for p, per_layer in pooled.items()
    }
