"""Encoder blocks under torch.compile (SCSTRATA_COMPILE=1) compute what the eager blocks do.

Tolerance 1e-5 absolute (fp32 on CPU; measured ~1e-6). One compiled graph must serve every
block and every batch size: parameters are graph inputs and the token count is symbolic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scstrata_service.families import FAMILIES, fabricate

from helpers import make_cells


@pytest.mark.parametrize("family", ["scfoundation", "tahoe", "geneformer"])
def test_compiled_blocks_match_eager_blocks_across_batch_sizes(tmp_path, family):
    folder = fabricate(family, tmp_path / family, hidden=32, depth=3, heads=4, seed=5)
    eager = FAMILIES[family]("eager", folder, device="cpu")
    # a small token budget splits the cells into batches of different token counts
    fused = FAMILIES[family]("fused", folder, device="cpu", compile_blocks=True, max_tokens=2500)
    counts, genes = make_cells(eager.known_genes(), n_cells=30, n_genes=600, seed=8)
    cells = eager.tokenize(counts, genes, {})
    pooling = eager.card.default_pooling
    torch._dynamo.utils.counters.clear()
    got = fused.embed(cells, [1, 3], [pooling])[pooling]
    want = eager.embed(cells, [1, 3], [pooling])[pooling]
    for k in (1, 3):
        assert np.abs(got[k] - want[k]).max() < 1e-5, k
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_cuda_only_attention_kernels_are_refused_on_cpu(tmp_path):
    folder = fabricate("scfoundation", tmp_path / "scf", hidden=32, depth=2, heads=4)
    with pytest.raises(ValueError, match=r"varlen.*needs a CUDA device"):
        FAMILIES["scfoundation"]("scf", folder, device="cpu", attention="varlen")
    with pytest.raises(ValueError, match="attention must be one of"):
        FAMILIES["scfoundation"]("scf", folder, device="cpu", attention="flashy")
