"""GPU fast path (runs only where CUDA is present; elsewhere pytest reports it as skipped).

bf16 tolerance: each pooled vector of the packed bf16 CUDA path is within 2% relative L2
error of the fp32 CPU per-cell reference (serving-notes.md measured 0.5-1.2%), and the
cosine similarity is above 0.999.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scstrata_service.families import scfoundation

from helpers import GPU_KERNEL_IDS, GPU_KERNELS, make_cells
from reference_scfoundation import ScFoundationReference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: not run")


def relative_errors(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)


@pytest.mark.parametrize(("attention", "compiled"), GPU_KERNELS, ids=GPU_KERNEL_IDS)
def test_packed_bf16_on_cuda_matches_the_fp32_per_cell_reference(
    tiny_checkpoint, vocabulary, attention, compiled
):
    counts, genes = make_cells(vocabulary, n_cells=24, n_genes=1500, seed=51)
    backend = scfoundation.load(
        "scf", tiny_checkpoint, attention=attention, compile_blocks=compiled
    )
    assert backend.device.type == "cuda" and backend.policy.compute_dtype == torch.bfloat16
    pooled = backend.embed(backend.tokenize(counts, genes, {}), [0, 1, 3], ["official", "S"])
    reference = ScFoundationReference(tiny_checkpoint)
    cells = [reference.embed_cell(row, genes) for row in counts.toarray()]
    for pooling in ("official", "S"):
        for k in (0, 1, 3):
            want = np.stack([c[k][pooling] for c in cells])
            got = pooled[pooling][k]
            assert relative_errors(got, want).max() < 0.02, (pooling, k)
            cosine = (
                (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
            )
            assert cosine.min() > 0.999, (pooling, k)


def test_default_token_budget_comes_from_free_gpu_memory(tiny_checkpoint):
    backend = scfoundation.load("scf", tiny_checkpoint)
    free, _ = torch.cuda.mem_get_info()
    assert 4096 <= backend.max_tokens <= min(1 << 20, free)
    assert backend.attention == "varlen"
