"""Token-budget planning, out-of-memory splitting, and the layer convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scstrata_service.contract import TokenizedCells
from scstrata_service.layers import LayerError, resolve_layers
from scstrata_service.runtime.batching import (
    AcceleratorOutOfMemory,
    embed_in_batches,
    pass_observer,
    plan_batches,
)


def cells_of(lengths) -> TokenizedCells:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.arange(offsets[-1], dtype=np.float32)
    return TokenizedCells(
        token_ids=np.zeros(offsets[-1], dtype=np.int64), values=values, offsets=offsets
    )


def sum_forward(batch: TokenizedCells) -> dict:
    """A stand-in encoder: each cell's value sum, so placement errors show."""
    sums = np.add.reduceat(batch.values, batch.offsets[:-1]).reshape(-1, 1)
    return {"p": {0: sums.astype(np.float32)}}


def test_plan_batches_respects_the_budget_and_covers_every_cell_once():
    lengths = np.array([5, 90, 12, 40, 40, 7, 130, 1])
    batches = plan_batches(lengths, max_tokens=100)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert lengths[batch].sum() <= 100 or len(batch) == 1  # an overlong cell goes alone
    assert [len(b) for b in batches if 6 in b] == [1]
    assert lengths[seen].tolist() == sorted(lengths, reverse=True)  # longest first


def test_results_come_back_in_cell_order_across_batches():
    lengths = np.array([3, 9, 1, 4, 7, 2])
    cells = cells_of(lengths)
    out = embed_in_batches(cells, max_tokens=8, forward=sum_forward)["p"][0].ravel()
    expected = [cells.values[s:e].sum() for s, e in zip(cells.offsets[:-1], cells.offsets[1:])]
    np.testing.assert_allclose(out, expected)


def test_out_of_memory_splits_the_batch_and_gives_the_same_result():
    cells = cells_of(np.array([3, 9, 1, 4, 7, 2, 6]))
    calls = []

    def fragile(batch: TokenizedCells) -> dict:
        calls.append(batch.n_cells)
        if batch.offsets[-1] > 10:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return sum_forward(batch)

    observed = []
    token = pass_observer.set(lambda n, tokens, slots: observed.append((n, tokens)))
    try:
        split = embed_in_batches(cells, max_tokens=1000, forward=fragile)
    finally:
        pass_observer.reset(token)
    whole = embed_in_batches(cells, max_tokens=1000, forward=sum_forward)
    np.testing.assert_allclose(split["p"][0], whole["p"][0])
    assert calls[0] == 7 and len(calls) > 1
    assert sum(n for n, _ in observed) == 7  # only successful passes are counted


def test_one_cell_that_does_not_fit_raises_a_clear_error():
    def always_oom(batch):
        raise torch.OutOfMemoryError("injected")

    with pytest.raises(AcceleratorOutOfMemory, match="one cell of 9 tokens"):
        embed_in_batches(cells_of(np.array([9])), max_tokens=100, forward=always_oom)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", [0, 1, 2, 3, 4]),
        (0, [0]),
        (-1, [4]),
        (-5, [0]),
        ([4, 1, 1, -2], [1, 3, 4]),
    ],
)
def test_layer_specs_resolve_to_the_convention(spec, expected):
    assert resolve_layers(spec, 4) == expected


@pytest.mark.parametrize("spec", [5, -6, [], ["1"], True, "last", [0, 2.5]])
def test_bad_layer_specs_are_refused_with_the_range(spec):
    with pytest.raises(LayerError, match="layers"):
        resolve_layers(spec, 4)
