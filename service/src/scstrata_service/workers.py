"""Several service workers on one host: how many to start, and which device each one uses.

BentoML starts ``workers`` processes that share the listening socket (the kernel hands each
new connection to one of them). With ``resources={"gpu": n}`` it gives every worker the same
``CUDA_VISIBLE_DEVICES`` (all n GPUs), so pinning a worker to one GPU is done here: worker
``i`` (``bentoml.server_context.worker_index``, counted from 1) takes visible GPU
``(i - 1) mod n``. On a CPU host the workers share the cores, each with its share of torch's
threads.

Nothing here imports torch at module level: ``scstrata serve`` counts GPUs before it starts
BentoML, and the count comes from NVML, which does not create a CUDA context.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

WORKERS_ENV = "SCSTRATA_WORKERS"


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use: those named in ``CUDA_VISIBLE_DEVICES`` when it is
    set (CUDA stops at the first invalid entry, such as ``-1``), else NVML's device count."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        count = 0
        for entry in env.split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            count += 1
        return count
    try:
        import pynvml  # nvidia-ml-py, a BentoML dependency
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError):
        return 0  # no driver: a CPU host
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def parse_workers(text: str | None, gpus: int) -> int:
    """``SCSTRATA_WORKERS``: a positive count, or ``auto`` (the default): one per GPU, or one
    worker on a host without GPUs."""
    value = (text or "auto").strip().lower()
    if value == "auto":
        return max(1, gpus)
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(
            f"{WORKERS_ENV} must be a positive number of workers or 'auto' "
            f"(one per GPU), got {text!r}"
        )
    return count


def bentoml_resources(gpus: int) -> dict:
    """The ``resources`` of the BentoML service: every GPU of the host, when there are any.

    Without GPUs nothing is claimed, because a GPU resource makes BentoML set
    ``CUDA_VISIBLE_DEVICES`` to device ids that do not exist.
    """
    return {"gpu": gpus} if gpus else {}


@dataclass(frozen=True)
class WorkerPlacement:
    """Where this worker runs: reported by ``GET /worker`` and the ``scstrata_worker`` gauge."""

    worker: int  # 1-based, as BentoML numbers its workers
    workers: int
    device: str  # the torch device this worker's models are on
    cuda_visible_devices: str | None  # the host GPUs behind cuda:0, cuda:1, ... here
    torch_threads: int

    def as_dict(self) -> dict:
        return {
            "worker": self.worker,
            "workers": self.workers,
            "device": self.device,
            "cuda_visible_devices": self.cuda_visible_devices,
            "torch_threads": self.torch_threads,
        }


def worker_index() -> int:
    """This process's BentoML worker index (from 1); 1 outside a BentoML worker."""
    from bentoml import server_context

    return int(server_context.worker_index or 1)


def device_for(requested: str | None, worker: int, cuda_devices: int) -> str | None:
    """The device of worker ``worker``: the one asked for (``SCSTRATA_DEVICE``) if any, else
    its own GPU round-robin, else None (the backends' default: CPU)."""
    if requested:
        return requested
    if cuda_devices:
        return f"cuda:{(worker - 1) % cuda_devices}"
    return None


def place_this_worker(requested_device: str | None, workers: int) -> WorkerPlacement:
    """Choose this worker's device and make it torch's current one; on a CPU host with
    several workers, give each its share of the cores so they do not oversubscribe them."""
    import torch

    worker = worker_index()
    device = device_for(requested_device, worker, torch.cuda.device_count())
    resolved = torch.device(device or "cpu")
    if resolved.type == "cuda" and resolved.index is not None:
        # Kernels and allocations that name no device go to this worker's GPU, not cuda:0.
        torch.cuda.set_device(resolved)
    elif workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    global _current
    _current = WorkerPlacement(
        worker=worker,
        workers=workers,
        device=str(resolved),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        torch_threads=torch.get_num_threads(),
    )
    return _current


_current: WorkerPlacement | None = None


def current_placement() -> WorkerPlacement | None:
    """What :func:`place_this_worker` chose in this process (None before it ran)."""
    return _current
