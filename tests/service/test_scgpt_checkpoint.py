"""Loading the scGPT release layout: the card, strict tensor checks, vocabulary, input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scstrata_service.contract import InputError
from scstrata_service.families import scgpt
from scstrata_service.families.scgpt.checkpoint import (
    ENCODER_PREFIXES,
    CheckpointError,
    load_checkpoint,
)
from scstrata_service.families.scgpt.fabricate import fabricate_checkpoint

from helpers import COMMON_INPUT_ERRORS, common_input_error, poisson_counts

LAYER0 = "transformer_encoder.layers.0"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return fabricate_checkpoint(tmp_path_factory.mktemp("scgpt"))


@pytest.fixture(scope="module")
def backend(folder):
    return scgpt.load("sg", folder)


def test_the_card_describes_the_checkpoint(backend):
    card = backend.card
    assert card.family == "scgpt" and card.n_layers == 3 and card.hidden_size == 32
    assert card.poolings == {"official": 32, "cls": 32, "mean": 32}
    assert card.gene_id_kind == "symbol" and card.vocab_size == 500
    assert card.demo_weights is True and card.checkpoint_digest.startswith("sha256:")
    assert set(card.options) == {"final_norm", "max_length", "subsample", "ties", "seed"}


def test_only_encoder_tensors_are_kept_and_specials_are_not_genes(folder, backend):
    raw = torch.load(folder / "best_model.pt", weights_only=True)
    for prefix in ("decoder.fc.", "mvc_decoder.", "flag_encoder."):
        assert any(k.startswith(prefix) for k in raw), prefix
    loaded = load_checkpoint(folder)
    assert all(k.startswith(ENCODER_PREFIXES) for k in loaded.encoder_state)
    vocab = json.loads((folder / "vocab.json").read_text())
    assert vocab["<cls>"] == 501 and vocab["<pad>"] == 500  # specials after the genes
    assert "<cls>" not in backend.known_genes() and len(backend.known_genes()) == 500


def test_demo_weights_flag_comes_from_args_json(tmp_path):
    folder = fabricate_checkpoint(tmp_path)
    args = json.loads((folder / "args.json").read_text())
    del args["demo_weights"]
    (folder / "args.json").write_text(json.dumps(args))
    assert scgpt.load("sg", folder).card.demo_weights is False


def test_missing_special_tokens_are_appended_as_upstream(tmp_path, folder, backend):
    other = fabricate_checkpoint(tmp_path)  # same seed, same weights
    vocab = json.loads((other / "vocab.json").read_text())
    del vocab["<eoc>"]  # the highest id: appended again with the same id
    (other / "vocab.json").write_text(json.dumps(vocab))
    assert load_checkpoint(other).vocabulary["<eoc>"] == 502
    genes = backend.known_genes()[:40]
    a = backend.embed(backend.tokenize(poisson_counts(), genes, {}), [3], ["cls"])["cls"][3]
    b = scgpt.load("sg", other)
    np.testing.assert_array_equal(
        a, b.embed(b.tokenize(poisson_counts(), genes, {}), [3], ["cls"])["cls"][3]
    )


def _rewrite(folder, file, change):
    if file == "best_model.pt":
        state = torch.load(folder / file, weights_only=True)
        change(state)
        torch.save(state, folder / file)
    else:
        raw = json.loads((folder / file).read_text())
        change(raw)
        (folder / file).write_text(json.dumps(raw))


def _add_block(state):
    for key in [k for k in state if k.startswith(LAYER0)]:
        state[key.replace(".layers.0.", ".layers.3.")] = state[key]


DAMAGES = {
    "no_weights": (None, "missing \\['best_model.pt'\\]"),
    "missing": (
        ("best_model.pt", lambda s: s.pop("value_encoder.norm.weight")),
        "missing encoder tensor\\(s\\) value_encoder.norm.weight",
    ),
    "missing_qkv": (
        ("best_model.pt", lambda s: s.pop(f"{LAYER0}.self_attn.Wqkv.bias")),
        f"missing encoder tensor\\(s\\) {LAYER0}.self_attn.Wqkv.bias",
    ),
    "misshaped": (
        ("best_model.pt", lambda s: s.update({f"{LAYER0}.linear1.weight": torch.zeros(16, 32)})),
        f"misshaped encoder tensor\\(s\\) {LAYER0}.linear1.weight is \\[16, 32\\], "
        "expected \\[32, 32\\]",
    ),
    "d_hid": (
        ("args.json", lambda a: a.update(d_hid=64)),
        f"misshaped encoder tensor\\(s\\) {LAYER0}.linear1.weight is \\[32, 32\\], expected",
    ),
    "vocabulary": (
        ("vocab.json", lambda v: v.update(EXTRA=503)),
        "encoder.embedding.weight is \\[503, 32\\], expected \\[504, 32\\]",
    ),
    "extra_block": (
        ("best_model.pt", _add_block),
        "unexpected tensor\\(s\\) .*: blocks \\[3\\] beyond nlayers 3",
    ),
    "wrapped": (
        ("best_model.pt", lambda s: [s.update({f"module.{k}": s.pop(k)}) for k in list(s)]),
        "missing encoder tensor.*'module.' prefix",
    ),
    "gap_in_ids": (("vocab.json", lambda v: v.update(A1BG=9999)), "token ids must be 0..502"),
    "category": (
        ("args.json", lambda a: a.update(input_emb_style="category")),
        "input_emb_style 'category' unsupported",
    ),
    "pre_norm": (("args.json", lambda a: a.update(pre_norm=True)), "pre_norm is true"),
    "no_nheads": (("args.json", lambda a: a.pop("nheads")), "missing key 'nheads'"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_wrong_release_is_refused_naming_the_file_and_tensor(tmp_path, damage):
    folder = fabricate_checkpoint(tmp_path)
    edit, message = DAMAGES[damage]
    if edit is None:
        (folder / "best_model.pt").unlink()
    else:
        _rewrite(folder, *edit)
    with pytest.raises(CheckpointError, match=message):
        scgpt.load("sg", folder)


def test_gene_symbols_match_exactly_and_unknown_ones_are_reported(backend):
    genes = backend.known_genes()[:40]
    counts = poisson_counts()
    lowered = [genes[0].lower()] + genes[1:]
    tokens = backend.tokenize(counts, lowered + ["NOT_A_GENE"], {})
    assert tokens.unmapped_genes == [genes[0].lower(), "NOT_A_GENE"]
    first = tokens.token_ids[tokens.offsets[0] : tokens.offsets[1]]
    assert first[0] == 501 and backend.tokenizer.index[genes[0]] not in first


@pytest.mark.parametrize(
    "case, field", [("ensembl", "genes"), ("bad ties", "options.ties"), *COMMON_INPUT_ERRORS]
)
def test_input_errors_name_the_field(backend, case, field):
    genes, counts, options = backend.known_genes()[:40], poisson_counts(), {}
    if case == "ensembl":
        genes = [f"ENSG{i:011d}" for i in range(len(genes))]
    elif case == "bad ties":
        options = {"ties": "first"}
    else:
        counts, options = common_input_error(case, counts)
    with pytest.raises(InputError) as err:
        backend.check_input(counts, genes, options)
    assert str(err.value).startswith(field), str(err.value)
    if case == "ensembl":
        assert "look like Ensembl ids" in str(err.value)
    if case == "empty cell":
        assert "rows [1]" in str(err.value)
