"""Option ``final_norm: false``: layer L is block L without the family's final norm.

scFoundation has one (card ``final_norm: true``): layer L with the option equals the
float64 per-cell reference's block-L output before ``encoder.norm`` (1e-5, fp32 on CPU), and
without it the normed output as before. Geneformer has none: the option changes nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from scstrata_service.contract import InputError
from scstrata_service.families import fabricate, load

from helpers import make_cells
from reference_scfoundation import ScFoundationReference

TOL = dict(rtol=1e-5, atol=1e-5)


def test_layer_l_without_the_final_norm_is_the_last_block(tiny_backend, tiny_checkpoint):
    assert tiny_backend.card.final_norm is True
    L = tiny_backend.card.n_layers
    counts, genes = make_cells(tiny_backend.known_genes(), n_cells=5, seed=11)
    tokens = tiny_backend.tokenize(counts, genes, {"final_norm": False})
    raw = tiny_backend.embed(tokens, [L - 1, L], ["S", "mean"], final_norm=False)
    normed = tiny_backend.embed(tokens, [L], ["S"])
    reference = ScFoundationReference(tiny_checkpoint)
    captured = {}
    # the reference's last block output, before its final layer norm
    hook = reference.blocks[-1].register_forward_hook(
        lambda m, i, o: captured.setdefault("x", []).append(o[0])
    )
    for row in range(counts.shape[0]):
        want = reference.embed_cell(counts.toarray()[row], genes)
        np.testing.assert_allclose(normed["S"][L][row], want[L]["S"], **TOL)
        pre_norm = captured["x"][-1].numpy()
        np.testing.assert_allclose(raw["S"][L][row], pre_norm[-1], **TOL)
        np.testing.assert_allclose(raw["S"][L - 1][row], want[L - 1]["S"], **TOL)
    hook.remove()


def test_final_norm_changes_nothing_for_a_family_without_one(tmp_path):
    backend = load(
        "geneformer",
        "gf",
        fabricate("geneformer", tmp_path / "gf", hidden=32, n_layers=2, n_heads=4),
        device="cpu",
    )
    assert backend.card.final_norm is False
    counts, genes = make_cells(backend.known_genes(), n_cells=4, seed=2)
    tokens = backend.tokenize(counts, genes, {"final_norm": False})
    a = backend.embed(tokens, [2], ["official"], final_norm=False)["official"][2]
    b = backend.embed(tokens, [2], ["official"])["official"][2]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match=r"options\.final_norm"):
        backend.check_input(counts, genes, {"final_norm": "sometimes"})
