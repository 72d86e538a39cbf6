"""Tahoe-X1's CUDA path: packed bf16 blocks against the fp32 CPU path (CUDA only).

Tolerance: per pooled vector, relative L2 error below 3% and cosine similarity above 0.999
(bf16 weights and activations; both input encoders stay fp32). The same comparison with bf16
blocks on CPU gave at most 0.7% and 0.99998. Elsewhere pytest reports it skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scstrata_service.families.tahoe.fabricate import fabricate_checkpoint

from helpers import GPU_KERNEL_IDS, GPU_KERNELS, assert_bf16_close, cpu_and_gpu, sparse_counts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: not run")


POOLINGS = ["official", "cls", "mean"]


@pytest.mark.parametrize("n_kv_heads", [None, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize(("attention", "compiled"), GPU_KERNELS, ids=GPU_KERNEL_IDS)
def test_bf16_packed_cuda_path_matches_fp32_cpu(tmp_path, attention, compiled, n_kv_heads):
    folder = fabricate_checkpoint(
        tmp_path, hidden=64, n_heads=4, n_kv_heads=n_kv_heads, vocab_genes=2000, max_length=512
    )
    cpu, gpu = cpu_and_gpu("tahoe", folder, attention, compiled)
    rng = np.random.default_rng(8)
    genes = list(cpu.tokenizer.index)
    counts = sparse_counts(rng, 24, len(genes), rate=1.0, density=0.1)
    tokens = cpu.tokenize(counts, genes, {})
    want = cpu.embed(tokens, [0, 1, 3], POOLINGS)
    got = gpu.embed(tokens, [0, 1, 3], POOLINGS)
    assert_bf16_close(got, want, POOLINGS, (0, 1, 3))
