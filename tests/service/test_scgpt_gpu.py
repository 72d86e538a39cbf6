"""scGPT's CUDA path: packed bf16 blocks against the fp32 CPU path (CUDA only).

Tolerance: per pooled vector, relative L2 error below 3% and cosine similarity above 0.999
(bf16 weights and activations; the gene and value encoders stay fp32), as for the other
families. The same comparison with bf16 blocks on CPU gave at most 0.9% and 0.99996.
Elsewhere pytest reports it skipped ("no CUDA device: not run").
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scstrata_service.families import scgpt
from scstrata_service.families.scgpt.fabricate import fabricate_checkpoint

from helpers import GPU_KERNEL_IDS, GPU_KERNELS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: not run")

POOLINGS = ["official", "cls", "mean"]


@pytest.mark.parametrize(("attention", "compiled"), GPU_KERNELS, ids=GPU_KERNEL_IDS)
def test_bf16_packed_cuda_path_matches_fp32_cpu(tmp_path, attention, compiled):
    folder = fabricate_checkpoint(tmp_path, hidden=64, n_heads=4, n_genes=2000)
    cpu = scgpt.load("sg", folder, device="cpu")
    gpu = scgpt.load("sg", folder, attention=attention, compile_blocks=compiled)
    assert gpu.device.type == "cuda" and gpu.policy.compute_dtype == torch.bfloat16
    rng = np.random.default_rng(8)
    genes = cpu.known_genes()
    dense = rng.poisson(1.0, (24, len(genes))) * (rng.random((24, len(genes))) < 0.1)
    dense[:, 0] += 1
    tokens = cpu.tokenize(sp.csr_matrix(dense.astype(np.float64)), genes, {"max_length": 512})
    want = cpu.embed(tokens, [0, 1, 3], POOLINGS)
    got = gpu.embed(tokens, [0, 1, 3], POOLINGS)
    for pooling in POOLINGS:
        for k in (0, 1, 3):
            a, b = got[pooling][k], want[pooling][k]
            relative = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            assert relative.max() < 0.03 and cosine.min() > 0.999, (pooling, k, relative.max())
