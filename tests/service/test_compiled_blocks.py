"""Encoder blocks under torch.compile (SCSTRATA_COMPILE=1) compute what the eager blocks do.

Tolerance 1e-5 absolute (fp32 on CPU; measured ~1e-6). One compiled graph must serve every
block and every batch size: parameters are graph inputs and the token count is symbolic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scstrata_service.families import fabricate, load

from helpers import make_cells


@pytest.mark.parametrize("family", ["scfoundation", "tahoe", "geneformer"])
def test_compiled_blocks_match_eager_blocks_across_batch_sizes(tmp_path, family):
    folder = fabricate(family, tmp_path / family, hidden=32, n_layers=3, n_heads=4, seed=5)
    eager = load(family, "eager", folder, device="cpu")
    # a small token budget splits the cells into batches of different token counts
    fused = load(family, "fused", folder, device="cpu", compile_blocks=True, max_tokens=2500)
    counts, genes = make_cells(eager.known_genes(), n_cells=30, n_genes=600, seed=8)
    cells = eager.tokenize(counts, genes, {})
    pooling = eager.card.default_pooling
    torch._dynamo.reset()  # forget graphs compiled by earlier tests
    torch._dynamo.utils.counters.clear()
    got = fused.embed(cells, [1, 3], [pooling])[pooling]
    want = eager.embed(cells, [1, 3], [pooling])[pooling]
    for k in (1, 3):
        assert np.abs(got[k] - want[k]).max() < 1e-5, k
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_cuda_only_attention_kernels_are_refused_on_cpu(tmp_path):
    folder = fabricate("scfoundation", tmp_path / "scf", hidden=32, n_layers=2, n_heads=4)
    with pytest.raises(ValueError, match=r"varlen.*needs a CUDA device"):
        load("scfoundation", "scf", folder, device="cpu", attention="varlen")
    with pytest.raises(ValueError, match="attention must be one of"):
        load("scfoundation", "scf", folder, device="cpu", attention="flashy")


def test_a_failed_compilation_falls_back_to_eager_blocks(tiny_checkpoint, monkeypatch):
    from scstrata_service.families import scfoundation
    from scstrata_service.runtime import compile as compile_cache

    def broken_compile(fn):
        def run(*args, **kwargs):
            raise torch._dynamo.exc.TorchDynamoException("no C compiler for Triton (simulated)")

        return run

    monkeypatch.setattr(compile_cache, "compiled", broken_compile)  # every encoder's blocks
    backend = scfoundation.load("scf", tiny_checkpoint, device="cpu", compile_blocks=True)
    eager = scfoundation.load("scf", tiny_checkpoint, device="cpu", compile_blocks=False)
    counts, genes = make_cells(eager.known_genes(), n_cells=6, seed=3)
    cells = eager.tokenize(counts, genes, {})
    got = backend.embed(cells, [2], ["S"])["S"][2]
    assert backend.policy.compile_blocks is False
    np.testing.assert_allclose(got, eager.embed(cells, [2], ["S"])["S"][2], atol=1e-6)


def test_compile_is_on_by_default_only_on_cuda_and_warm_up_compiles(tiny_checkpoint):
    from scstrata_service.families import scfoundation
    from scstrata_service.registry import ModelSpec, Registry

    assert scfoundation.load("scf", tiny_checkpoint, device="cpu").policy.compile_blocks is False
    torch._dynamo.reset()  # forget graphs compiled by earlier tests
    torch._dynamo.utils.counters.clear()
    registry = Registry.load(
        [ModelSpec("scf", "scfoundation", str(tiny_checkpoint.parent))],
        device="cpu",
        compile_blocks=True,
    )
    assert registry.get("scf").policy.compile_blocks is True
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # compiled at load


def test_compile_setting_is_a_strict_flag(monkeypatch):
    from scstrata_service.settings import Settings

    for text, value in (("1", True), ("0", False), ("", None), ("true", True)):
        monkeypatch.setenv("SCSTRATA_COMPILE", text)
        assert Settings.from_env().compile_blocks is value
    monkeypatch.setenv("SCSTRATA_COMPILE", "maybe")
    with pytest.raises(ValueError, match="SCSTRATA_COMPILE must be 1 or 0"):
        Settings.from_env()
