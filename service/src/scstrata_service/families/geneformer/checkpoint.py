"""Read a Geneformer model folder: Hugging Face BERT weights plus the gene dictionaries.

A served folder holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``),
as in the model subfolders of the Hugging Face repository ``ctheodoris/Geneformer``, and
next to them the pickles the official tokenizer reads (facts in docs/models.md):

- token dictionary ``token_dictionary*.pkl`` (Ensembl id -> token id, plus ``<pad>``,
  ``<mask>`` and, in the V2 series, ``<cls>`` and ``<eos>``);
- gene medians ``gene_median_dictionary*.pkl`` (Ensembl id -> non-zero median expression);
- optionally the id mapping ``ensembl_mapping_dict*.pkl`` (Ensembl id -> the id it is
  collapsed onto); without it every dictionary gene maps to itself.

The folder must hold exactly one file of each kind, or the loader settings name them
(``token_dictionary``, ``gene_median_file``, ``gene_mapping_file``). The series is read
from the token dictionary: ``<cls>`` and ``<eos>`` present = V2, both absent = V1.
"""

from __future__ import annotations

import logging
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scstrata_service.contract import CheckpointError
from scstrata_service.digest import files_digest
from scstrata_service.release_files import folder_of, read_json_object

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # transformers' own preference order
TOKEN_DICTIONARY_GLOB = "token_dictionary*.pkl"
GENE_MEDIAN_GLOB = "gene_median_dictionary*.pkl"
GENE_MAPPING_GLOB = "ensembl_mapping_dict*.pkl"
SPECIAL_TOKENS = ("<pad>", "<mask>", "<cls>", "<eos>")
# Released input sizes (= max_position_embeddings of the released configs).
RELEASE_INPUT_SIZE = {"V1": 2048, "V2": 4096}
# A config.json field set by fabricate.py: the weights are random demo weights.
DEMO_FLAG = "scstrata_demo_weights"


class _DictionaryUnpickler(pickle.Unpickler):
    """Unpickle plain dictionaries only: no arbitrary code from a model folder.

    The official pickles hold dicts of str -> int / float, possibly as numpy scalars.
    """

    ALLOWED = frozenset(
        {
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("collections", "OrderedDict"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not allowed in a Geneformer dictionary pickle"
            )
        return super().find_class(module, name)


def read_pickled_dict(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _DictionaryUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
        raise CheckpointError(f"{path}: not a plain pickled dictionary ({err})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def model_folder(path: Path) -> Path:
    """The folder of a checkpoint given as the folder or any file inside it."""
    folder = folder_of(path)
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"no Geneformer checkpoint at {path}: {folder}/{CONFIG_FILE} missing")
    return folder


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no weights file; expected one of {list(WEIGHT_FILES)}")


def find_one(folder: Path, pattern: str, setting: str, given: Path | str | None) -> Path | None:
    """The file named in settings, else the single file in ``folder`` matching ``pattern``."""
    if given is not None:
        path = Path(given)
        if not path.is_absolute() and not path.exists():
            path = folder / path
        if not path.is_file():
            raise CheckpointError(f"setting {setting}: {given} is not a file")
        return path
    found = sorted(folder.glob(pattern))
    if len(found) > 1:
        names = [p.name for p in found]
        raise CheckpointError(
            f"{folder}: several files match {pattern} ({names}); keep one or name it in the "
            f"model setting {setting!r}"
        )
    return found[0] if found else None


@dataclass
class GeneDictionaries:
    """The tokenizer's view of the pickles, checked and converted to plain Python types."""

    version: str  # "V1" | "V2"
    gene_tokens: dict[str, int]  # gene id -> token id (special tokens excluded)
    medians: dict[str, float]  # gene id -> median (only genes in gene_tokens)
    mapping: dict[str, str]  # input id (upper case) -> dictionary gene id
    special: dict[str, int]  # the special tokens present, e.g. {"<pad>": 0, "<mask>": 1}
    files: dict[str, str] = field(default_factory=dict)
    n_tokens: int = 0  # entries of the token dictionary (genes + special tokens)

    @property
    def cls_id(self) -> int | None:
        return self.special.get("<cls>")

    @property
    def eos_id(self) -> int | None:
        return self.special.get("<eos>")


def load_dictionaries(
    folder: Path,
    token_dictionary: Path | str | None = None,
    gene_median_file: Path | str | None = None,
    gene_mapping_file: Path | str | None = None,
) -> GeneDictionaries:
    token_path = find_one(folder, TOKEN_DICTIONARY_GLOB, "token_dictionary", token_dictionary)
    median_path = find_one(folder, GENE_MEDIAN_GLOB, "gene_median_file", gene_median_file)
    mapping_path = find_one(folder, GENE_MAPPING_GLOB, "gene_mapping_file", gene_mapping_file)
    for path, pattern, setting in (
        (token_path, TOKEN_DICTIONARY_GLOB, "token_dictionary"),
        (median_path, GENE_MEDIAN_GLOB, "gene_median_file"),
    ):
        if path is None:
            raise CheckpointError(
                f"{folder}: no {pattern} beside the checkpoint; copy the official pickle of "
                f"this model's series there or name it in the model setting {setting!r}"
            )

    tokens = read_pickled_dict(token_path)
    special = {k: _as_token_id(tokens[k], token_path, k) for k in SPECIAL_TOKENS if k in tokens}
    has_cls, has_eos = "<cls>" in special, "<eos>" in special
    if has_cls != has_eos:
        raise CheckpointError(
            f"{token_path}: has {'<cls>' if has_cls else '<eos>'} but not "
            f"{'<eos>' if has_cls else '<cls>'}; V2 dictionaries hold both, V1 neither"
        )
    version = "V2" if has_cls else "V1"
    gene_tokens = {
        str(k): _as_token_id(v, token_path, k) for k, v in tokens.items() if k not in special
    }
    if not gene_tokens:
        raise CheckpointError(f"{token_path}: no genes in the token dictionary")
    all_ids = list(gene_tokens.values()) + list(special.values())
    if len(set(all_ids)) != len(all_ids):
        raise CheckpointError(f"{token_path}: token ids are not unique")

    raw_medians = read_pickled_dict(median_path)
    medians: dict[str, float] = {}
    missing = []
    for gene in gene_tokens:
        if gene not in raw_medians:
            missing.append(gene)
            continue
        value = float(raw_medians[gene])
        if not (math.isfinite(value) and value > 0):
            raise CheckpointError(f"{median_path}: median of {gene} is {value}; must be > 0")
        medians[gene] = value
    if missing:
        # The official tokenizer would fail on such a gene; here it is left unmapped.
        log.warning(
            "%d genes of %s have no median in %s and will not be tokenized (e.g. %s)",
            len(missing),
            token_path.name,
            median_path.name,
            missing[:3],
        )
        for gene in missing:
            del gene_tokens[gene]
        if not gene_tokens:
            raise CheckpointError(f"{median_path}: no gene of {token_path.name} has a median")

    if mapping_path is not None:
        raw_mapping = read_pickled_dict(mapping_path)
        # as upstream: keep only entries whose target is a dictionary gene
        mapping = {str(k): str(v) for k, v in raw_mapping.items() if v in gene_tokens}
    else:
        mapping = {gene: gene for gene in gene_tokens}

    files = {"token_dictionary": token_path.name, "gene_median_file": median_path.name}
    if mapping_path is not None:
        files["gene_mapping_file"] = mapping_path.name
    return GeneDictionaries(version, gene_tokens, medians, mapping, special, files, len(tokens))


def _as_token_id(value: object, path: Path, key: object) -> int:
    try:
        as_int = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: token id of {key!r} is {value!r}, not an integer") from None
    if as_int != value or as_int < 0:
        raise CheckpointError(f"{path}: token id of {key!r} is {value!r}, not an integer >= 0")
    return as_int


@dataclass
class BertWeights:
    """The encoder part of a ``BertForMaskedLM`` checkpoint (the MLM head is dropped)."""

    config: object  # transformers.BertConfig
    state: dict[str, torch.Tensor]  # keys as in BertModel: embeddings.*, encoder.layer.{i}.*
    digest: str
    demo_weights: bool
    weights_name: str


def load_bert(folder: Path) -> BertWeights:
    """Load the checkpoint with transformers from the local folder (never downloads)."""
    from transformers import BertForMaskedLM

    raw = read_json_object(folder / CONFIG_FILE)
    if raw.get("model_type") != "bert":
        raise CheckpointError(
            f"{folder}/{CONFIG_FILE}: model_type is {raw.get('model_type')!r}; Geneformer "
            "checkpoints are 'bert'"
        )
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(
            f"{folder}/{CONFIG_FILE}: position_embedding_type "
            f"{raw.get('position_embedding_type')!r} is not supported (Geneformer: 'absolute')"
        )
    if raw.get("is_decoder", False):
        raise CheckpointError(f"{folder}/{CONFIG_FILE}: is_decoder is true; expected an encoder")
    weights = weights_file(folder)
    model = BertForMaskedLM.from_pretrained(str(folder), local_files_only=True)
    config = model.config
    state = {k: v.detach().float().clone() for k, v in model.bert.state_dict().items()}
    del model
    return BertWeights(
        config=config,
        state=state,
        digest=files_digest([weights]),
        demo_weights=bool(raw.get(DEMO_FLAG, False)),
        weights_name=weights.name,
    )
