"""Geneformer's CUDA path: packed bf16 blocks against the fp32 CPU path (CUDA only).

Tolerance: per pooled vector, relative L2 error below 3% and cosine similarity above 0.999
(bf16 weights and activations; layer 0 stays fp32). Elsewhere pytest reports it skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scstrata_service.families.geneformer.fabricate import fabricate_checkpoint

from helpers import GPU_KERNEL_IDS, GPU_KERNELS, assert_bf16_close, cpu_and_gpu, sparse_counts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: not run")


@pytest.mark.parametrize(("attention", "compiled"), GPU_KERNELS, ids=GPU_KERNEL_IDS)
def test_bf16_packed_cuda_path_matches_fp32_cpu(tmp_path, attention, compiled):
    folder = fabricate_checkpoint(tmp_path, version="V2", hidden=64, n_layers=3, n_genes=2000)
    cpu, gpu = cpu_and_gpu("geneformer", folder, attention, compiled)
    rng = np.random.default_rng(8)
    genes = list(cpu.tokenizer.genes)
    counts = sparse_counts(rng, 24, len(genes), rate=1.0, density=0.4)
    tokens = cpu.tokenize(counts, genes, {})
    want = cpu.embed(tokens, [0, 1, 3], ["official", "cls"])
    got = gpu.embed(tokens, [0, 1, 3], ["official", "cls"])
    assert_bf16_close(got, want, ("official", "cls"), (0, 1, 3))
