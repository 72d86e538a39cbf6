import numpy as np
import pytest
from client_fakes import plan_job

from scstrata_client import ProtocolError
from scstrata_client._core import EmbedJob


def _job(counts, gene_names, chunk_size=3, layers="all"):
    return plan_job(counts, gene_names, chunk_size=chunk_size, layers=layers)


def test_chunk_bodies_carry_only_their_own_rows(counts, gene_names):
    job = _job(counts, gene_names)
    assert job.ranges == [(0, 3), (3, 6), (6, 7)]
    shapes = [job.body(i)["items"][0]["cells"]["shape"] for i in range(3)]
    assert shapes == [[3, 4], [3, 4], [1, 4]]
    assert job.body(2)["items"][0]["genes"] == gene_names


def test_chunks_accepted_out_of_order_come_back_in_input_order(counts, gene_names, make_result):
    job = _job(counts, gene_names)
    for i in (2, 0, 1):
        job.accept(i, [make_result(job.body(i)["items"][0], [0, 12])])
    result = job.result()
    assert list(result) == [0, 12]
    np.testing.assert_allclose(result[0][:, 0], counts.sum(axis=1))
    np.testing.assert_array_equal(result[12][:, 1], np.full(7, 12.0))
    assert result[0].dtype == np.float32


def test_result_before_every_chunk_replied_raises(counts, gene_names, make_result):
    job = _job(counts, gene_names)
    job.accept(0, [make_result(job.body(0)["items"][0], [0])])
    with pytest.raises(RuntimeError, match=r"\[1, 2\]"):
        job.result()


def test_chunks_disagreeing_on_layers_raise(counts, gene_names, make_result):
    job = _job(counts, gene_names)
    job.accept(0, [make_result(job.body(0)["items"][0], [0, 12])])
    with pytest.raises(ProtocolError, match=r"chunk 1\b.*layers"):
        job.accept(1, [make_result(job.body(1)["items"][0], [0])])


def test_chunks_disagreeing_on_dim_raise(counts, gene_names, make_result):
    job = _job(counts, gene_names)
    job.accept(0, [make_result(job.body(0)["items"][0], [0], dim=3)])
    with pytest.raises(ProtocolError, match="dim 5"):
        job.accept(1, [make_result(job.body(1)["items"][0], [0], dim=5)])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"model": ""}, "^model:"), ({"pooling": None}, "^pooling:"), ({"options": [1]}, "^options:")],
)
def test_bad_arguments_fail_before_any_request(counts, gene_names, kwargs, pattern):
    args = {"model": "m", "layers": "all", "pooling": "official", "options": None} | kwargs
    with pytest.raises((ValueError, TypeError), match=pattern):
        EmbedJob.plan(counts, gene_names, chunk_size=3, **args)
