"""scGPT's CUDA path: packed bf16 blocks against the fp32 CPU path (CUDA only).

Tolerance: per pooled vector, relative L2 error below 3% and cosine similarity above 0.999
(bf16 weights and activations; the gene and value encoders stay fp32), as for the other
families. The same comparison with bf16 blocks on CPU gave at most 0.9% and 0.99996.
Elsewhere pytest reports it skipped ("no CUDA device: not run").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scstrata_service.families.scgpt.fabricate import fabricate_checkpoint

from helpers import GPU_KERNEL_IDS, GPU_KERNELS, assert_bf16_close, cpu_and_gpu, sparse_counts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: not run")

POOLINGS = ["official", "cls", "mean"]


@pytest.mark.parametrize(("attention", "compiled"), GPU_KERNELS, ids=GPU_KERNEL_IDS)
def test_bf16_packed_cuda_path_matches_fp32_cpu(tmp_path, attention, compiled):
    folder = fabricate_checkpoint(tmp_path, hidden=64, n_heads=4, n_genes=2000)
    cpu, gpu = cpu_and_gpu("scgpt", folder, attention, compiled)
    rng = np.random.default_rng(8)
    genes = cpu.known_genes()
    counts = sparse_counts(rng, 24, len(genes), rate=1.0, density=0.1)
    tokens = cpu.tokenize(counts, genes, {"max_length": 512})
    want = cpu.embed(tokens, [0, 1, 3], POOLINGS)
    got = gpu.embed(tokens, [0, 1, 3], POOLINGS)
    assert_bf16_close(got, want, POOLINGS, (0, 1, 3))
