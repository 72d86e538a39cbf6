"""One layer rule: the client's resolution (clients/, no torch) and the service's (layers.py)
give the same answer for every request, and refuse the same requests.

The client returns None where the service refuses (the service's 4xx then explains), and
refuses locally what is not an int, a list of ints or "all" before asking anything.
"""

from __future__ import annotations

import pytest

from scstrata_client._protocol import normalise_layers
from scstrata_client._protocol import resolve_layers as client_resolve
from scstrata_service.contract import ModelCard
from scstrata_service.layers import LayerError, Readout, resolve_layers

N_LAYERS = 4
TABLE = [
    0,
    2,
    4,
    -1,
    -5,
    [3, 1, 3],
    [0, -1],
    [-2, 2],
    "all",
    5,  # out of range above
    -6,  # out of range below
    [1, 9],
    [],
    "last",
    [1.5],
    True,
    [True],
]


def service_answer(spec) -> list[int] | None:
    try:
        return resolve_layers(spec, N_LAYERS)
    except LayerError:
        return None


def client_answer(spec) -> list[int] | None:
    try:
        return client_resolve(normalise_layers(spec), N_LAYERS)
    except (TypeError, ValueError):  # refused before any request
        return None


@pytest.mark.parametrize("spec", TABLE, ids=[repr(s) for s in TABLE])
def test_client_and_service_resolve_layers_alike(spec):
    assert client_answer(spec) == service_answer(spec)


def test_the_table_covers_both_answers():
    answers = [service_answer(spec) for spec in TABLE]
    assert answers[:9] == [[0], [2], [4], [4], [0], [1, 3], [0, 4], [2, 3], [0, 1, 2, 3, 4]]
    assert answers[9:] == [None] * (len(TABLE) - 9)


def test_a_readout_is_resolved_once_against_the_card():
    card = ModelCard(
        name="m",
        family="f",
        n_layers=N_LAYERS,
        hidden_size=8,
        poolings={"mean": 8, "cls": 8},
        gene_id_kind="symbol",
        vocab_size=10,
        checkpoint_digest="",
    )
    readout = Readout.resolve(card, [-1, 1], ["mean", "cls", "mean"], final_norm=False)
    assert readout == Readout((1, 4), ("cls", "mean"), False) and readout.last == 4
    with pytest.raises(LayerError, match=r"pooling: 'S' is not offered by 'm'"):
        Readout.resolve(card, 1, "S")
    with pytest.raises(LayerError, match="out of range"):
        Readout.resolve(card, 5, "mean")
    merged = Readout.merge([readout, Readout((0,), ("mean",), False)])
    assert merged == Readout((0, 1, 4), ("cls", "mean"), False)
    with pytest.raises(ValueError, match="separate passes"):
        Readout.merge([readout, Readout((0,), ("mean",), True)])
