"""Read a Tahoe-X1 release folder (facts in docs/models.md, "Tahoe-X1").

The Hugging Face release keeps one folder per size (``70m-model/``, ``1b-model/``,
``3b-model/``) holding ``model_config.yml``, ``collator_config.yml``, ``vocab.json`` and
``model.safetensors``; a Composer training run leaves ``best-model.pt`` instead of the
safetensors file (its weights under ``["state"]["model"]``). Weight names are the official
``TXModel`` names behind a ``model.`` prefix. Only the gene encoder, the expression encoder
and the transformer stack are kept: decoders, the flag encoder (it adds nothing at
inference) and the chemical encoder are dropped.

Every size is read from the YAML files; defaults below are the official code's defaults for
keys a config leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from scstrata_service.contract import CheckpointError
from scstrata_service.digest import files_digest
from scstrata_service.release_files import load_weights_only, read_json_object, release_folder

MODEL_CONFIG = "model_config.yml"
COLLATOR_CONFIG = "collator_config.yml"
VOCABULARY = "vocab.json"
SAFETENSORS = "model.safetensors"
COMPOSER = "best-model.pt"
ENCODER_PREFIXES = ("gene_encoder.", "expression_encoder.", "transformer_encoder.")
LAYERNORMS = ("layernorm", "low_precision_layernorm")
CELL_EMB_STYLES = ("cls", "avg-pool")


def _activation_name(name: object, where: str) -> str:
    # upstream resolves the name as an attribute of torch.nn.functional (plus "quick_gelu")
    if not isinstance(name, str) or not (name == "quick_gelu" or hasattr(F, name)):
        raise CheckpointError(f"{where}: {name!r} is not a torch.nn.functional activation")
    return name


@dataclass(frozen=True)
class TahoeConfig:
    """The encoder's hyper-parameters, from ``model_config.yml``."""

    d_model: int
    n_layers: int
    n_heads: int
    kv_heads: int
    ffn_hidden: int
    activation: str
    use_glu: bool
    norm_scheme: str  # "pre" (releases) or "post"
    norm_eps: float
    cell_emb_style: str
    gene_norm: bool
    value_norm: bool
    value_activation: str
    max_value: float
    vocab_size: int
    precision: str

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_yaml(cls, raw: dict[str, Any]) -> TahoeConfig:
        try:
            d_model, n_layers, n_heads = (
                int(raw["d_model"]),
                int(raw["n_layers"]),
                int(raw["n_heads"]),
            )
            vocab_size = int(raw["vocab_size"])
        except KeyError as err:
            raise CheckpointError(f"{MODEL_CONFIG}: missing key {err.args[0]!r}") from None
        if d_model % n_heads:
            raise CheckpointError(f"{MODEL_CONFIG}: d_model {d_model} is not divisible by n_heads")
        attn = raw.get("attn_config") or {}
        attn_type = attn.get("attn_type", "grouped_query_attention")
        # TXBlock hands `kv_n_heads` (default n_heads) to the attention class; a `kv_nheads`
        # key (as in the training YAMLs) is not read upstream, so it is not read here either.
        kv_heads = {
            "grouped_query_attention": int(attn.get("kv_n_heads", n_heads)),
            "multihead_attention": n_heads,
            "multiquery_attention": 1,
        }.get(attn_type)
        if kv_heads is None:
            raise CheckpointError(
                f"{MODEL_CONFIG}: attn_config.attn_type {attn_type!r} unsupported"
            )
        if kv_heads <= 0 or n_heads % kv_heads:
            raise CheckpointError(
                f"{MODEL_CONFIG}: n_heads {n_heads} is not a multiple of kv_n_heads {kv_heads}"
            )
        ratio = raw.get("expansion_ratio", 4)
        ffn_hidden = int(d_model * ratio)
        if ffn_hidden != d_model * ratio:
            raise CheckpointError(f"{MODEL_CONFIG}: d_model * expansion_ratio is not an integer")
        norm = raw.get("norm_config") or {}
        norm_type = str(norm.get("norm_type", "low_precision_layernorm")).lower()
        if norm_type not in LAYERNORMS:
            raise CheckpointError(
                f"{MODEL_CONFIG}: norm_config.norm_type {norm_type!r} unsupported; "
                f"supported: {LAYERNORMS}"
            )
        norm_scheme = raw.get("norm_scheme", "pre")
        if norm_scheme not in ("pre", "post"):
            raise CheckpointError(f"{MODEL_CONFIG}: norm_scheme must be 'pre' or 'post'")
        style = raw.get("cell_emb_style", "cls")
        if style not in CELL_EMB_STYLES:
            raise CheckpointError(
                f"{MODEL_CONFIG}: cell_emb_style {style!r} unsupported; supported: "
                f"{CELL_EMB_STYLES} ('w-pool' needs per-gene weights the official inference "
                "path never passes)"
            )
        gene = raw.get("gene_encoder") or {}
        if gene.get("embeddings"):
            raise CheckpointError(
                f"{MODEL_CONFIG}: gene_encoder.embeddings (extra pretrained gene embeddings) "
                "are not supported"
            )
        expr = raw.get("expression_encoder") or {}
        if expr.get("input_emb_style", "continuous") != "continuous":
            raise CheckpointError(
                f"{MODEL_CONFIG}: expression_encoder.input_emb_style must be 'continuous' "
                "(the only style the official model implements)"
            )
        return cls(
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            kv_heads=kv_heads,
            ffn_hidden=ffn_hidden,
            activation=_activation_name(
                raw.get("transformer_activation", "gelu"), "transformer_activation"
            ),
            use_glu=bool(raw.get("use_glu", False)),
            norm_scheme=norm_scheme,
            norm_eps=float(norm.get("eps", 1e-5)),
            cell_emb_style=style,
            gene_norm=bool(gene.get("use_norm", False)),
            value_norm=bool(expr.get("use_norm", False)),
            value_activation=_activation_name(
                expr.get("activation", "relu"), "expression_encoder.activation"
            ),
            max_value=float(expr.get("max_value", 512)),
            vocab_size=vocab_size,
            precision=str(raw.get("precision", "amp_bf16")),
        )


@dataclass(frozen=True)
class CollatorConfig:
    """The value preprocessing, from ``collator_config.yml`` (inference: no masking)."""

    pad_value: float
    do_binning: bool
    log_transform: bool
    target_sum: float
    num_bins: int
    right_binning: bool
    max_length: int
    keep_first_n_tokens: int
    use_chem_token: bool

    @classmethod
    def from_yaml(cls, raw: dict[str, Any]) -> CollatorConfig:
        try:
            pad_value, max_length = float(raw["pad_value"]), int(raw["max_length"])
        except KeyError as err:
            raise CheckpointError(f"{COLLATOR_CONFIG}: missing key {err.args[0]!r}") from None
        do_binning = bool(raw.get("do_binning", True))
        log_transform = bool(raw.get("log_transform", False))
        if do_binning and log_transform:
            raise CheckpointError(f"{COLLATOR_CONFIG}: do_binning and log_transform both set")
        keep = int(raw.get("keep_first_n_tokens", 1))
        if keep < 1 or keep >= max_length:
            raise CheckpointError(
                f"{COLLATOR_CONFIG}: keep_first_n_tokens {keep} must be in 1..max_length-1"
            )
        return cls(
            pad_value=pad_value,
            do_binning=do_binning,
            log_transform=log_transform,
            target_sum=float(raw.get("target_sum") or 10_000),
            num_bins=int(raw.get("num_bins", 51)),
            right_binning=bool(raw.get("right_binning", False)),
            max_length=max_length,
            keep_first_n_tokens=keep,
            use_chem_token=bool(raw.get("use_chem_token", False)),
        )


@dataclass
class TahoeCheckpoint:
    folder: Path
    config: TahoeConfig
    collator: CollatorConfig
    vocabulary: dict[str, int]
    encoder_state: dict[str, torch.Tensor]
    digest: str
    demo_weights: bool


def find_folder(path: Path) -> Path:
    """The release folder: ``path`` itself, or the folder of a file inside it."""
    return release_folder(
        path,
        (MODEL_CONFIG, COLLATOR_CONFIG, VOCABULARY),
        "a Tahoe-X1 release folder",
        f"{MODEL_CONFIG}, {COLLATOR_CONFIG}, {VOCABULARY} and {SAFETENSORS} or {COMPOSER}",
    )


def _read_yaml(file: Path) -> dict[str, Any]:
    raw = yaml.safe_load(file.read_text())
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a YAML mapping")
    return raw


def load_vocabulary(folder: Path) -> dict[str, int]:
    file = folder / VOCABULARY
    raw = read_json_object(file)
    if not all(isinstance(v, int) for v in raw.values()):
        raise CheckpointError(f"{file}: expected a JSON object token -> integer index")
    if "<cls>" not in raw:
        raise CheckpointError(f"{file}: no '<cls>' token")
    return raw


def _raw_state(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    if (folder / SAFETENSORS).is_file():
        from safetensors.torch import load_file

        file = folder / SAFETENSORS
        return load_file(str(file)), file
    file = folder / COMPOSER
    if not file.is_file():
        raise CheckpointError(f"{folder}: no weights ({SAFETENSORS} or {COMPOSER})")
    raw = load_weights_only(file, f"export its weights to {SAFETENSORS}")
    try:
        return raw["state"]["model"], file
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{file}: expected a Composer checkpoint with ['state']['model']"
        ) from None


def encoder_state(raw: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Strip the ``model.`` prefix and keep the encoder's weights only."""
    state = {}
    for key, tensor in raw.items():
        name = key[len("model.") :] if key.startswith("model.") else key
        if name.startswith(ENCODER_PREFIXES):
            state[name] = tensor
    if "gene_encoder.embedding.weight" not in state:
        example = sorted(raw)[:3]
        raise CheckpointError(
            f"{source}: not Tahoe-X1 weights (no model.gene_encoder.embedding.weight; keys such "
            f"as {example})"
        )
    return state


def load_checkpoint(path: Path) -> TahoeCheckpoint:
    folder = find_folder(path)
    raw_model = _read_yaml(folder / MODEL_CONFIG)
    config = TahoeConfig.from_yaml(raw_model)
    collator = CollatorConfig.from_yaml(_read_yaml(folder / COLLATOR_CONFIG))
    vocabulary = load_vocabulary(folder)
    raw, weights = _raw_state(folder)
    state = encoder_state(raw, weights)
    rows, dim = state["gene_encoder.embedding.weight"].shape
    if (rows, dim) != (config.vocab_size, config.d_model):
        raise CheckpointError(
            f"{weights}: gene embedding is {rows} x {dim}, but {MODEL_CONFIG} says vocab_size "
            f"{config.vocab_size}, d_model {config.d_model}"
        )
    if max(vocabulary.values()) >= rows or min(vocabulary.values()) < 0:
        raise CheckpointError(f"{folder / VOCABULARY}: token indices exceed the {rows} embeddings")
    qkv = state.get("transformer_encoder.layers.0.self_attn.Wqkv.weight")
    expected = config.d_model + 2 * config.kv_heads * config.head_dim
    if qkv is not None and qkv.shape[0] != expected:
        raise CheckpointError(
            f"{weights}: Wqkv has {qkv.shape[0]} rows; {MODEL_CONFIG} implies {expected} "
            f"({config.n_heads} heads, {config.kv_heads} kv heads of {config.head_dim})"
        )
    return TahoeCheckpoint(
        folder=folder,
        config=config,
        collator=collator,
        vocabulary=vocabulary,
        encoder_state=state,
        digest=files_digest(
            [weights, folder / MODEL_CONFIG, folder / COLLATOR_CONFIG, folder / VOCABULARY]
        ),
        demo_weights=bool(raw_model.get("demo_weights", False)),
    )
