"""Device policy: where and how a model runs, decided once at load (every family).

Device, compute dtype, packed-attention kernel, torch.compile on/off, the token budget per
forward pass, putting weights on the device and arrays to and from it, one pass at a time per
device, and the number of CPU threads. The defaults and the measurements behind them are in
bench/RESULTS.md.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from scstrata_service.runtime.attention import ATTENTION_IMPLS, CUDA_ONLY_ATTENTION

log = logging.getLogger(__name__)

THREADS_ENV = "SCSTRATA_THREADS"


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (BentoML may set CUDA_VISIBLE_DEVICES on any host: decide in code)."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 transformer blocks on GPU, fp32 on CPU; input embeddings stay fp32 everywhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def default_attention(device: torch.device) -> str:
    # On an H200 the direct varlen flash call beat jagged nested tensors by 12-14% (no copies of
    # q/k/v, no host syncs) and cuDNN's ragged path by 1.7-1.9x; on CPU nested-tensor SDPA was
    # ~70x slower than a loop of per-cell SDPA calls (bench/RESULTS.md).
    return "varlen" if device.type == "cuda" else "per_cell"


def default_compile(device: torch.device) -> bool:
    # H200: +3.4% and +4.9% cells/s in two runs (beyond run-to-run noise of ~2%), crossing 50%
    # of the bf16 peak; on CPU the compiled blocks were no faster (bench/RESULTS.md).
    return device.type == "cuda"


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


@dataclass(frozen=True)
class DevicePolicy:
    """How one loaded model runs. ``compute_dtype`` is the blocks' dtype (layer 0 is fp32)."""

    device: torch.device
    compute_dtype: torch.dtype
    attention: str
    compile_blocks: bool
    max_tokens: int

    @classmethod
    def choose(
        cls,
        hidden_size: int,
        *,
        device: str | None = None,
        attention: str | None = None,
        compile_blocks: bool | None = None,
        max_tokens: int | None = None,
    ) -> DevicePolicy:
        """The service's settings where given (None = the device's default)."""
        torch_device = pick_device(device)
        # torch.compile fuses each block's residual adds into its norms around the attention
        # kernel: +3-5% on an H200, so on by default there; on CPU it was no faster. The first
        # batch compiles (warm_up); a failure falls back to eager (runtime/backend.py).
        return cls(
            device=torch_device,
            compute_dtype=compute_dtype_for(torch_device),
            attention=check_attention(attention or default_attention(torch_device), torch_device),
            compile_blocks=default_compile(torch_device)
            if compile_blocks is None
            else bool(compile_blocks),
            max_tokens=max_tokens or default_max_tokens(torch_device, hidden_size),
        )

    def eager(self) -> DevicePolicy:
        return replace(self, compile_blocks=False)

    def place(
        self,
        encoder: torch.nn.Module,
        state: Mapping[str, torch.Tensor],
        blocks: torch.nn.Module | None,
    ) -> None:
        """Load the checkpoint's weights into ``encoder`` (every key must match), put it in
        eval mode on the device and ``blocks`` in the compute dtype there; ``blocks=None`` keeps
        everything fp32 (a runtime other than torch runs the blocks)."""
        encoder.load_state_dict(state, strict=True)
        encoder.eval().to(self.device)
        if blocks is not None:
            blocks.to(self.compute_dtype)

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        """Host array -> device tensor; pinned and non-blocking on CUDA."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)


def to_host(pooled: dict[str, dict[int, torch.Tensor]]) -> dict[str, dict[int, np.ndarray]]:
    """Pooled vectors (the only thing that leaves the device) as host float32 arrays."""
    return {
        p: {k: t.detach().float().cpu().numpy() for k, t in per_layer.items()}
        for p, per_layer in pooled.items()
    }


# One forward pass at a time per device: each pass's token budget assumes it has the
# accelerator's memory to itself (the service's dispatches also take the accelerator in turn,
# engine.py; this lock holds for library use from several threads too).
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def device_lock(device: torch.device) -> threading.Lock:
    with _LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(str(device), threading.Lock())


def thread_count(environ: Mapping[str, str] = os.environ) -> int:
    """``SCSTRATA_THREADS``, else the CPUs this process may run on (its affinity mask, which a
    container or ``taskset`` narrows; ``os.cpu_count()`` would count the whole host)."""
    text = environ.get(THREADS_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{THREADS_ENV} must be a whole number >= 1, got {text!r}")
        return int(text)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def apply_threads(n: int | None = None) -> int:
    """Use ``n`` threads (default :func:`thread_count`) in torch and in the BLAS/OpenMP pools
    numpy and scipy use; returns ``n``."""
    from threadpoolctl import threadpool_limits

    n = thread_count() if n is None else n
    torch.set_num_threads(n)
    threadpool_limits(n)
    log.info("CPU threads: %d (torch and BLAS)", n)
    return n
