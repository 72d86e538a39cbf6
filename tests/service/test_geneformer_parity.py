"""The served Geneformer equals transformers' own BertForMaskedLM at every layer and pooling.

Reference: ``BertForMaskedLM.from_pretrained(folder)`` (eager attention, fp32, CPU) with
``output_hidden_states=True``, run one cell at a time and as a padded batch with an
attention mask, as the official EmbExtractor does. The service path is the packed encoder.
Tolerance: 1e-5 absolute and relative on token states and pooled vectors (fp32 both sides).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scstrata_service.families import geneformer
from scstrata_service.families.geneformer.checkpoint import CheckpointError
from scstrata_service.families.geneformer.fabricate import fabricate_checkpoint
from scstrata_service.layers import Readout
from scstrata_service.runtime.attention import PackedLayout
from scstrata_service.runtime.backend import PackedBackend
from scstrata_service.runtime.forward import layer_states

TOL = dict(rtol=1e-5, atol=1e-5)
N_LAYERS = 3
# small input sizes so that dense cells are truncated and the last positions are used
INPUT_SIZE = {"V1": 48, "V2": 64}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, object]:
    return {
        version: fabricate_checkpoint(
            tmp_path_factory.mktemp(f"gf_{version}"),
            version=version,
            n_layers=N_LAYERS,
            input_size=INPUT_SIZE[version],
            seed=1 if version == "V1" else 2,
        )
        for version in ("V1", "V2")
    }


@pytest.fixture(scope="module")
def references(folders) -> dict[str, torch.nn.Module]:
    from transformers import BertForMaskedLM

    return {
        version: BertForMaskedLM.from_pretrained(
            str(folder), local_files_only=True, attn_implementation="eager"
        ).eval()
        for version, folder in folders.items()
    }


def make_cells(backend: PackedBackend, n_cells: int = 10, seed: int = 0):
    """Raw counts over most dictionary genes, one id of the mapping pickle, two unknown ids."""
    rng = np.random.default_rng(seed)
    dictionary = backend.tokenizer.genes
    alias = next(k for k, v in backend.tokenizer.mapping.items() if k != v)
    genes = [*rng.choice(dictionary, 300, replace=False), alias, "ENSG_NOT_A_GENE", "FOO"]
    density = rng.uniform(0.03, 0.4, size=(n_cells, 1))
    dense = rng.poisson(2.0, (n_cells, len(genes))) * (rng.random((n_cells, len(genes))) < density)
    dense[:, 0] += 1  # every cell expresses a dictionary gene
    return sp.csr_matrix(dense.astype(np.float64)), genes


def cell_ids(tokens, i: int) -> torch.Tensor:
    return torch.from_numpy(tokens.token_ids[tokens.offsets[i] : tokens.offsets[i + 1]])


def reference_states(model, tokens, padded: bool) -> list[list[np.ndarray]]:
    """Per cell, the list of hidden_states[0..L] of its real tokens."""
    n = tokens.n_cells
    with torch.no_grad():
        if not padded:
            per_cell = []
            for i in range(n):
                out = model(input_ids=cell_ids(tokens, i)[None], output_hidden_states=True)
                per_cell.append([h[0].numpy() for h in out.hidden_states])
            return per_cell
        lengths = tokens.lengths
        ids = torch.zeros((n, int(lengths.max())), dtype=torch.long)  # <pad> = 0
        mask = torch.zeros_like(ids)
        for i in range(n):
            ids[i, : lengths[i]] = cell_ids(tokens, i)
            mask[i, : lengths[i]] = 1
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return [[h[i, : lengths[i]].numpy() for h in out.hidden_states] for i in range(n)]


def official_pooling(states: list[list[np.ndarray]], version: str) -> dict[str, dict]:
    """EmbExtractor: emb_mode 'cell' = mean over tokens without <cls>/<eos>; 'cls' = token 0."""
    pooled: dict[str, dict] = {"official": {}, "cls": {}}
    for k in range(N_LAYERS + 1):
        cells = [cell[k] for cell in states]
        genes = [c[1:-1] if version == "V2" else c for c in cells]
        pooled["official"][k] = np.stack([g.mean(axis=0) for g in genes])
        pooled["cls"][k] = np.stack([c[0] for c in cells])
    pooled["mean"] = pooled["official"]
    return pooled


@pytest.mark.parametrize("version", ["V1", "V2"])
@pytest.mark.parametrize("attention", ["per_cell", "nested"])
def test_token_states_of_every_layer_equal_transformers(folders, references, version, attention):
    backend = geneformer.load("gf", folders[version], attention=attention)
    counts, genes = make_cells(backend)
    tokens = backend.tokenize(counts, genes, {})
    assert tokens.lengths.max() == INPUT_SIZE[version]  # some cells are truncated
    assert tokens.lengths.min() < INPUT_SIZE[version]
    layout = PackedLayout.from_offsets(tokens.offsets, torch.device("cpu"))
    with torch.no_grad():
        readout = Readout(tuple(range(N_LAYERS + 1)), ("official",))
        ours = dict(layer_states(backend.encoder, tokens, layout, readout, backend.policy))
    assert sorted(ours) == list(range(N_LAYERS + 1))
    for padded in (False, True):
        reference = reference_states(references[version], tokens, padded)
        for i, cell in enumerate(reference):
            s, e = tokens.offsets[i], tokens.offsets[i + 1]
            for k in range(N_LAYERS + 1):
                np.testing.assert_allclose(
                    ours[k][s:e].numpy(), cell[k], **TOL, err_msg=f"cell {i} layer {k} {padded=}"
                )


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_every_pooling_at_every_layer_equals_the_official_extractor(folders, references, version):
    backend = geneformer.load("gf", folders[version])
    counts, genes = make_cells(backend, seed=4)
    tokens = backend.tokenize(counts, genes, {})
    poolings = sorted(backend.card.poolings)
    assert poolings == (["cls", "mean", "official"] if version == "V2" else ["mean", "official"])
    layers = list(range(N_LAYERS + 1))
    pooled = backend.embed(tokens, layers, poolings)
    expected = official_pooling(reference_states(references[version], tokens, True), version)
    for pooling in poolings:
        for k in layers:
            np.testing.assert_allclose(
                pooled[pooling][k], expected[pooling][k], **TOL, err_msg=f"{pooling} layer {k}"
            )


def test_attention_implementations_agree(folders):
    per_cell = geneformer.load("gf", folders["V2"], attention="per_cell")
    nested = geneformer.load("gf", folders["V2"], attention="nested")
    counts, genes = make_cells(per_cell, seed=5)
    tokens = per_cell.tokenize(counts, genes, {})
    a = per_cell.embed(tokens, [1, 3], ["official", "cls"])
    b = nested.embed(tokens, [1, 3], ["official", "cls"])
    for pooling in ("official", "cls"):
        for k in (1, 3):
            np.testing.assert_allclose(a[pooling][k], b[pooling][k], **TOL)


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_small_token_budget_gives_the_same_numbers_as_one_batch(folders, version):
    one_pass = geneformer.load("gf", folders[version], max_tokens=1_000_000)
    many = geneformer.load("gf", folders[version], max_tokens=80)
    counts, genes = make_cells(one_pass, n_cells=14, seed=6)
    tokens = one_pass.tokenize(counts, genes, {})
    assert tokens.lengths.sum() > 4 * 80  # so the budget really splits the cells
    poolings = sorted(one_pass.card.poolings)
    a = one_pass.embed(tokens, [0, 2, 3], poolings)
    b = many.embed(tokens, [2, 0, 3], poolings)
    early = many.embed(tokens, [1], poolings)  # early exit: only block 1 runs
    c = one_pass.embed(tokens, [1], poolings)
    for pooling in poolings:
        for k in (0, 2, 3):
            np.testing.assert_allclose(a[pooling][k], b[pooling][k], **TOL)
        np.testing.assert_allclose(early[pooling][1], c[pooling][1], **TOL)


def test_config_activation_and_eps_are_honoured_and_bin_weights_load(tmp_path):
    from transformers import BertForMaskedLM

    folder = fabricate_checkpoint(
        tmp_path / "gelu", version="V1", hidden_act="gelu", layer_norm_eps=1e-3, n_layers=2
    )
    reference = BertForMaskedLM.from_pretrained(str(folder), local_files_only=True).eval()
    # the older releases ship pytorch_model.bin instead of model.safetensors
    torch.save(reference.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    backend = geneformer.load("gf", folder)
    assert backend.card.poolings == {"official": 32, "mean": 32}  # V1: no <cls>
    counts, genes = make_cells(backend, n_cells=4, seed=7)
    tokens = backend.tokenize(counts, genes, {})
    pooled = backend.embed(tokens, [0, 1, 2], ["official"])
    expected = reference_states(reference, tokens, padded=False)
    for k in (0, 1, 2):
        means = np.stack([cell[k].mean(axis=0) for cell in expected])
        np.testing.assert_allclose(pooled["official"][k], means, **TOL)
    with pytest.raises(ValueError, match="cls"):
        backend.embed(tokens, [2], ["cls"])


def test_card_labels_demo_weights_and_reads_the_release_layout(folders):
    backend = geneformer.load("gf", folders["V2"])
    card = backend.card
    assert card.family == "geneformer" and card.gene_id_kind == "ensembl"
    assert card.n_layers == N_LAYERS and card.hidden_size == 32 and card.vocab_size == 400
    assert card.demo_weights is True and card.checkpoint_digest.startswith("sha256:")
    assert backend.tokenizer.version == "V2" and backend.tokenizer.input_size == 64
    assert (backend.tokenizer.cls_id, backend.tokenizer.eos_id) == (2, 3)
    assert geneformer.load("gf", folders["V1"]).tokenizer.cls_id is None


def test_dictionary_files_must_be_unambiguous_or_named(tmp_path, folders):
    import shutil

    folder = tmp_path / "two"
    shutil.copytree(folders["V2"], folder)
    shutil.copy(folder / "token_dictionary_gc104M.pkl", folder / "token_dictionary_copy.pkl")
    with pytest.raises(CheckpointError, match="token_dictionary"):
        geneformer.load("gf", folder)
    named = geneformer.load("gf", folder, token_dictionary="token_dictionary_copy.pkl")
    assert named.tokenizer.version == "V2"
    (folder / "token_dictionary_copy.pkl").unlink()
    (folder / "gene_median_dictionary_gc104M.pkl").unlink()
    with pytest.raises(CheckpointError, match="gene_median"):
        geneformer.load("gf", folder)


def test_a_dictionary_of_another_release_is_refused(tmp_path, folders):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(folders["V1"], folder)
    small = fabricate_checkpoint(tmp_path / "small", version="V1", n_genes=20, n_layers=1)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(small / name, folder / name)  # weights with a 22-token vocabulary
    with pytest.raises(CheckpointError, match="vocab_size"):
        geneformer.load("gf", folder)
