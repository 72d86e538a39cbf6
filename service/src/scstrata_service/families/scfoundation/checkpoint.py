"""Read scFoundation's official `models.ckpt` (facts in ../shared/docs/models.md).

The file is a torch pickle: a dict of sub-checkpoints keyed ``'gene'``, ``'cell'`` and
``'rde'``, each ``{'config': {...}, 'state_dict': {...}}``. Cell embeddings use ``'cell'``.
The config nests model and data parameters; we flatten them the way the official loader
does. State-dict keys carry a ``model.`` prefix; only ``token_emb``, ``pos_emb`` and
``encoder`` are needed for cell embeddings (the decoder is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd
import torch

from scstrata_service.contract import CheckpointError
from scstrata_service.digest import files_digest
from scstrata_service.release_files import folder_of, load_weights_only

CHECKPOINT_FILE = "models.ckpt"
VOCABULARY_FILE = "OS_scRNA_gene_index.19264.tsv"
VERSIONS = ("cell", "gene", "rde")
ENCODER_PREFIXES = ("token_emb.", "pos_emb.", "encoder.")


@dataclass(frozen=True)
class ScFoundationConfig:
    seq_len: int
    bin_num: int
    bin_alpha: float
    pad_token_id: int
    mask_token_id: int
    hidden_dim: int
    depth: int
    heads: int

    @classmethod
    def from_flat(cls, flat: dict) -> ScFoundationConfig:
        encoder = flat["encoder"]
        if encoder.get("module_type") != "transformer":
            raise CheckpointError(
                f"encoder module_type is {encoder.get('module_type')!r}; only the released "
                "'transformer' encoder is supported"
            )
        return cls(
            seq_len=int(flat["seq_len"]),
            bin_num=int(flat["bin_num"]),
            bin_alpha=float(flat["bin_alpha"]),
            pad_token_id=int(flat["pad_token_id"]),
            mask_token_id=int(flat["mask_token_id"]),
            hidden_dim=int(encoder["hidden_dim"]),
            depth=int(encoder["depth"]),
            heads=int(encoder["heads"]),
        )


def flatten_config(config: dict) -> dict:
    """Model hyper-parameters and the rnaseq data parameters in one dict (as upstream)."""
    model_type = config.get("model")
    if model_type != "mae_autobin":
        raise CheckpointError(f"config['model'] is {model_type!r}; expected 'mae_autobin'")
    flat = dict(config["model_config"][model_type])
    flat.update(config["dataset_config"]["rnaseq"])
    return flat


def find_checkpoint(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"no scFoundation checkpoint at {path} (expected {CHECKPOINT_FILE})")
    return path


@dataclass
class LoadedCheckpoint:
    config: ScFoundationConfig
    encoder_state: dict[str, torch.Tensor]
    digest: str
    demo_weights: bool


def load_checkpoint(path: Path, version: str = "cell") -> LoadedCheckpoint:
    """Load one sub-checkpoint (``cell`` by default) and keep only the encoder weights."""
    if version not in VERSIONS:
        raise CheckpointError(f"version must be one of {VERSIONS}, got {version!r}")
    file = find_checkpoint(path)
    # the official file holds only tensors and plain config values
    raw = load_weights_only(file, f"expected the official {CHECKPOINT_FILE}")
    if not isinstance(raw, dict) or version not in raw:
        keys = list(raw) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{file}: expected sub-checkpoints {VERSIONS}, found {keys}")
    sub = raw[version]
    config = ScFoundationConfig.from_flat(flatten_config(sub["config"]))
    state = {}
    for key, tensor in sub["state_dict"].items():
        # upstream keeps the text after the first "model." (they are all prefixed)
        name = key.split("model.", 1)[1] if "model." in key else key
        if name.startswith(ENCODER_PREFIXES):
            state[name] = tensor
    return LoadedCheckpoint(
        config=config,
        encoder_state=state,
        digest=files_digest([file]),
        demo_weights=bool(sub.get("demo_weights", False)),
    )


def load_vocabulary(checkpoint_path: Path) -> list[str]:
    """The 19,264 gene symbols: the TSV beside the checkpoint, else the packaged copy."""
    beside = folder_of(checkpoint_path) / VOCABULARY_FILE
    source = (
        beside
        if beside.is_file()
        else resources.files("scstrata_service") / "data" / VOCABULARY_FILE
    )
    with source.open("rb") as fh:
        table = pd.read_csv(fh, sep="\t", header=0)
    if "gene_name" not in table.columns:
        raise CheckpointError(f"{source}: no 'gene_name' column")
    return table["gene_name"].astype(str).tolist()
