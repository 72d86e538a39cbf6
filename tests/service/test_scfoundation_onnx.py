"""scFoundation on the ONNX Runtime (``runtime: onnx``) equals the torch runtime.

Tolerance: 1e-5 absolute and relative, fp32 ORT on a padded batch against fp32 torch on the
packed batch (differences seen are ~1e-6).
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from scstrata_service.families import scfoundation
from scstrata_service.families.scfoundation.onnx_runtime import OnnxBlocks
from scstrata_service.launcher import running_service

from helpers import embed_item, make_cells

POOLINGS = ["official", "S", "T", "max", "mean"]
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def onnx_backend(tiny_checkpoint, tmp_path_factory):
    cache = tmp_path_factory.mktemp("onnx-cache")
    return scfoundation.load("scf", tiny_checkpoint, runtime="onnx", onnx_cache_dir=cache)


def assert_same(a, b, layers, poolings=POOLINGS):
    for p in poolings:
        for k in layers:
            np.testing.assert_allclose(a[p][k], b[p][k], **TOL, err_msg=f"layer {k}, {p}")


def test_the_onnx_runtime_has_the_same_card(onnx_backend, tiny_backend):
    assert isinstance(onnx_backend.blocks, OnnxBlocks)
    assert onnx_backend.card == tiny_backend.card


def test_every_layer_and_pooling_equals_the_torch_runtime(onnx_backend, tiny_backend, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=12, seed=5)
    tokens = tiny_backend.tokenize(counts, genes, {})
    assert len(set(tokens.lengths.tolist())) > 5  # uneven lengths: real padding in ORT
    layers = list(range(tiny_backend.card.n_layers + 1))
    assert_same(
        onnx_backend.embed(tokens, layers, POOLINGS),
        tiny_backend.embed(tokens, layers, POOLINGS),
        layers,
    )


def test_batch_and_sequence_axes_are_dynamic(
    tiny_checkpoint, onnx_backend, tiny_backend, vocabulary
):
    """A small token budget splits the cells into batches of other shapes than one pass."""
    counts, genes = make_cells(vocabulary, n_cells=15, seed=3)
    small = scfoundation.load(
        "scf",
        tiny_checkpoint,
        runtime="onnx",
        onnx_cache_dir=onnx_backend.blocks.cache_dir.parent,
        max_tokens=300,
    )
    tokens = tiny_backend.tokenize(counts, genes, {})
    expected = tiny_backend.embed(tokens, [1, 3], ["official"])
    assert_same(small.embed(tokens, [1, 3], ["official"]), expected, [1, 3], ["official"])
    assert_same(onnx_backend.embed(tokens, [1, 3], ["official"]), expected, [1, 3], ["official"])

    session = onnx_backend.blocks.session(3)
    dim = tiny_backend.card.hidden_size
    for shape in [(1, 7), (4, 23)]:
        x = np.random.default_rng(0).standard_normal((*shape, dim)).astype(np.float32)
        outs = session.run(None, {"x": x, "pad_mask": np.zeros(shape, dtype=bool)})
        assert [o.shape for o in outs] == [(*shape, dim)] * 3


def test_early_exit_exports_and_uses_a_shallower_graph(
    tiny_checkpoint, tmp_path, tiny_backend, vocabulary
):
    backend = scfoundation.load("scf", tiny_checkpoint, runtime="onnx", onnx_cache_dir=tmp_path)
    counts, genes = make_cells(vocabulary, n_cells=4, seed=9)
    tokens = backend.tokenize(counts, genes, {})
    backend.embed(tokens, [0], ["S"])  # layer 0 runs in torch: no graph at all
    assert backend.blocks.exported == [] and not list(tmp_path.rglob("*.onnx"))
    got = backend.embed(tokens, [1], POOLINGS)
    assert backend.blocks.exported == [1] and list(backend.blocks.sessions) == [1]
    assert [p.name for p in tmp_path.rglob("*.onnx")] == ["blocks-1-to-1-of-3.onnx"]
    assert len(backend.blocks.sessions[1].get_outputs()) == 1  # the depth-1 graph has one block
    assert_same(got, tiny_backend.embed(tokens, [1], POOLINGS), [1])
    backend.embed(tokens, [0, 2], ["S"])
    assert backend.blocks.exported == [1, 2]

    again = scfoundation.load("scf", tiny_checkpoint, runtime="onnx", onnx_cache_dir=tmp_path)
    assert_same(again.embed(tokens, [1], POOLINGS), got, [1])
    assert again.blocks.exported == []  # the cached .onnx file was reused


def test_an_unknown_runtime_is_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match="runtime must be one of"):
        scfoundation.load("scf", tiny_checkpoint, runtime="tensorrt")


def test_a_served_onnx_model_answers_like_in_process(
    tiny_checkpoint, tmp_path, onnx_backend, vocabulary
):
    config = tmp_path / "models.yaml"
    config.write_text(
        f"models:\n  - name: scf\n    family: scfoundation\n    path: {tiny_checkpoint}\n"
        f"    settings: {{runtime: onnx, onnx_cache_dir: {tmp_path / 'cache'}}}\n"
    )
    counts, genes = make_cells(vocabulary, n_cells=6, seed=11)
    with running_service([], extra_args=["--config", str(config)]) as url:
        reply = httpx.post(
            f"{url}/embed", json={"items": [embed_item(counts, genes, layers="all")]}, timeout=120
        )
    assert reply.status_code == 200, reply.text
    (result,) = reply.json()
    expected = onnx_backend.embed(
        onnx_backend.tokenize(counts, genes, {}), [0, 1, 2, 3], ["official"]
    )
    for k in range(4):
        np.testing.assert_allclose(
            np.array(result["layers"][str(k)]), expected["official"][k], **TOL
        )
    assert list((tmp_path / "cache").rglob("*.onnx"))  # the server exported into its setting
