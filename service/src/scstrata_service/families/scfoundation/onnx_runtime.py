"""scFoundation's transformer blocks in ONNX Runtime, as a second inference runtime.

A block runner for the shared forward (runtime/forward.py): layer 0 (value + gene position
embedding), the final norm and the pooling run in torch exactly as on the torch path; only
the blocks run in ONNX Runtime, on a padded batch rebuilt from the packed one (ORT has no
jagged attention) with a key padding mask, and the real tokens are packed again.

ORT executes a whole graph whatever outputs are fetched (serving-notes.md), so early exit
needs one graph per cut depth: the depth-``d`` graph returns the hidden states after blocks
``1..d`` (before any final norm) and a request for layers up to ``d`` uses it.
Graphs are exported lazily, on the first use of a depth, and cached as ``.onnx`` files in a
folder keyed by the checkpoint digest and sub-checkpoint version.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scstrata_service.families.scfoundation.encoder import TransformerStack
from scstrata_service.runtime.attention import PackedLayout

OPSET = 17
CACHE_ENV = "SCSTRATA_ONNX_CACHE_DIR"


def default_cache_dir(cache_key: str) -> Path:
    """``$SCSTRATA_ONNX_CACHE_DIR/<key>``, else a folder under the system temp dir."""
    root = os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "scstrata-onnx"
    return Path(root) / cache_key


def providers() -> list[str]:
    """CUDA when the installed onnxruntime has it (onnxruntime-gpu), else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class PaddedBlocks(nn.Module):
    """Blocks ``1..depth`` on a padded batch; one output per block, none normed after.

    Written out with plain ops (not ``TransformerEncoderLayer.forward``, whose fused fast
    path does not export) and the same maths as ``encoder.packed_block``: post-norm, ReLU.
    """

    def __init__(self, stack: TransformerStack, depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(stack.transformer_encoder[:depth])

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # x: [B, N, D] float32; pad_mask: [B, N] bool, True where the slot is padding.
        batch, tokens, dim = x.shape
        bias = torch.zeros_like(pad_mask, dtype=x.dtype).masked_fill(pad_mask, float("-inf"))
        bias = bias[:, None, None, :]  # [B, 1, 1, N]: padded keys get no attention
        outs = []
        for block in self.blocks:
            attn = block.self_attn
            heads = attn.num_heads
            head_dim = dim // heads
            qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
            qkv = qkv.view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, N, hd]
            scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / head_dim**0.5) + bias
            mixed = torch.matmul(torch.softmax(scores, dim=-1), v)
            mixed = mixed.transpose(1, 2).reshape(batch, tokens, dim)
            x = block.norm1(x + attn.out_proj(mixed))
            x = block.norm2(x + block.linear2(F.relu(block.linear1(x))))
            outs.append(x)
        return tuple(outs)


def export_depth(stack: TransformerStack, depth: int, path: Path) -> None:
    """Write the depth-``depth`` graph to ``path`` (atomically: temp file, then rename).

    Legacy TorchScript exporter: it needs only the ``onnx`` package (the dynamo exporter also
    needs onnxscript) and ``dynamic_axes`` keeps batch and sequence length free. torch 2.13
    flags it as deprecated; the tests fail loudly if a later torch drops it.
    """
    module = PaddedBlocks(copy.deepcopy(stack).float().cpu().eval(), depth)
    dim = stack.norm.normalized_shape[0]
    x = torch.randn(2, 5, dim)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 3:] = True
    names = [f"block{k}" for k in range(1, depth + 1)]
    axes = {"x": {0: "batch", 1: "tokens"}, "pad_mask": {0: "batch", 1: "tokens"}}
    axes.update({n: {0: "batch", 1: "tokens"} for n in names})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.part", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module,
                (x, mask),
                tmp,
                dynamo=False,
                input_names=["x", "pad_mask"],
                output_names=names,
                dynamic_axes=axes,
                opset_version=OPSET,
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class OnnxBlocks:
    """runtime.forward.BlockRunner of scFoundation's blocks in ONNX Runtime (``runtime: onnx``)."""

    def __init__(self, stack: TransformerStack, device: torch.device, cache_dir: Path):
        for package in ("onnxruntime", "onnx"):  # fail at start-up, not on the first request
            if importlib.util.find_spec(package) is None:
                raise RuntimeError(
                    f"runtime 'onnx' needs the {package!r} package (pip install {package}; "
                    "onnxruntime-gpu instead of onnxruntime on GPU hosts, never both)"
                )
        self.stack, self.device = stack, device
        self.n_layers = len(stack.transformer_encoder)
        self.cache_dir = Path(cache_dir)
        self.providers = providers()
        self.exported: list[int] = []  # depths this instance exported (others came cached)
        self.sessions: dict[int, object] = {}
        self._lock = threading.Lock()

    def graph_path(self, depth: int) -> Path:
        return self.cache_dir / f"blocks-1-to-{depth}-of-{self.n_layers}.onnx"

    def session(self, depth: int):
        """The ORT session of the depth-``depth`` graph, exporting the graph if not cached."""
        with self._lock:
            if depth not in self.sessions:
                import onnxruntime as ort

                path = self.graph_path(depth)
                if not path.exists():
                    export_depth(self.stack, depth, path)
                    self.exported.append(depth)
                self.sessions[depth] = ort.InferenceSession(str(path), providers=self.providers)
            return self.sessions[depth]

    def __call__(
        self, x: torch.Tensor, layout: PackedLayout, last: int, wanted: frozenset[int]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """The wanted layers of one run of the depth-``last`` graph on the cells padded to the
        longest, back in packed order."""
        if last == 0:
            return
        lengths = np.diff(np.asarray(layout.bounds))
        n_cells, width, dim = len(lengths), int(lengths.max()), x.shape[1]
        real = np.arange(width)[None, :] < lengths[:, None]  # [B, N]
        padded = np.zeros((n_cells, width, dim), dtype=np.float32)
        padded[real] = x.float().cpu().numpy()  # row-major order = packed order
        try:
            hidden = self.session(last).run(None, {"x": padded, "pad_mask": ~real})
        except Exception as err:  # onnxruntime reports allocation failures as RuntimeException
            if "alloc" in str(err).lower() or "out of memory" in str(err).lower():
                # the shared split-and-retry (runtime/batching.py) handles this type
                raise torch.OutOfMemoryError(f"ONNX Runtime: {err}") from err
            raise
        real_t = torch.from_numpy(real).to(self.device)
        for k in sorted(wanted - {0}):
            yield k, torch.from_numpy(hidden[k - 1]).to(self.device)[real_t]
