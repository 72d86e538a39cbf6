"""Geneformer's CUDA path: packed bf16 blocks against the fp32 CPU path (CUDA only).

Tolerance: per pooled vector, relative L2 error below 3% and cosine similarity above 0.999
(bf16 weights and activations; layer 0 stays fp32). Elsewhere pytest reports it skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scstrata_service.families import geneformer
from scstrata_service.families.geneformer.fabricate import fabricate_checkpoint

from helpers import GPU_KERNEL_IDS, GPU_KERNELS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: not run")


@pytest.mark.parametrize(("attention", "compiled"), GPU_KERNELS, ids=GPU_KERNEL_IDS)
def test_bf16_packed_cuda_path_matches_fp32_cpu(tmp_path, attention, compiled):
    folder = fabricate_checkpoint(tmp_path, version="V2", hidden=64, n_layers=3, n_genes=2000)
    cpu = geneformer.load("gf", folder, device="cpu")
    gpu = geneformer.load("gf", folder, attention=attention, compile_blocks=compiled)
    assert gpu.device.type == "cuda" and gpu.policy.compute_dtype == torch.bfloat16
    rng = np.random.default_rng(8)
    genes = list(cpu.tokenizer.genes)
    dense = rng.poisson(1.0, (24, len(genes))) * (rng.random((24, len(genes))) < 0.4)
    dense[:, 0] += 1
    tokens = cpu.tokenize(sp.csr_matrix(dense.astype(np.float64)), genes, {})
    want = cpu.embed(tokens, [0, 1, 3], ["official", "cls"])
    got = gpu.embed(tokens, [0, 1, 3], ["official", "cls"])
    for pooling in ("official", "cls"):
        for k in (0, 1, 3):
            a, b = got[pooling][k], want[pooling][k]
            relative = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            assert relative.max() < 0.03 and cosine.min() > 0.999, (pooling, k, relative.max())
