"""Read an scGPT release folder (facts in docs/models.md, "scGPT").

A release folder (e.g. "whole-human") holds ``args.json`` (the training settings),
``vocab.json`` (gene symbol -> token id) and ``best_model.pt`` (a bare fp32 state dict of
the official ``TransformerModel``). Only the encoder is kept: the gene encoder
(``encoder.*``), the value encoder (``value_encoder.*``) and the blocks
(``transformer_encoder.layers.*``); decoders, the flag encoder and anything else the
official embedding path does not run are dropped.

The official loader keeps whichever tensors match the model by name and shape and silently
leaves the rest at their random initial values. Here every encoder tensor must be present
with its expected shape, and a tensor under the encoder's prefixes that the architecture
does not have is refused as well; each error names the tensors.

Blocks are ``torch.nn.TransformerEncoderLayer`` here, as in the official model without
flash-attn: the release's fused ``self_attn.Wqkv`` (rows q; k; v) is torch's
``in_proj_weight`` under another name, and is renamed on load as the official loader does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scstrata_service.contract import CheckpointError, listed
from scstrata_service.digest import files_digest
from scstrata_service.release_files import load_weights_only, read_json_object, release_folder

ARGS = "args.json"
VOCABULARY = "vocab.json"
WEIGHTS = "best_model.pt"
# appended to the vocabulary when missing, in this order, as the official embed_data does
SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")
ENCODER_PREFIXES = ("encoder.", "value_encoder.", "transformer_encoder.")
LAYER_KEY = re.compile(r"^transformer_encoder\.layers\.(\d+)\.")
NAMES_LISTED = 8  # tensor names one error lists


@dataclass(frozen=True)
class ScGPTConfig:
    """The encoder's sizes and the tokenizer's constants, from ``args.json``."""

    hidden: int  # embsize
    n_layers: int  # nlayers
    n_heads: int  # nheads
    d_hid: int  # feed-forward width
    pad_token: str
    pad_value: float
    max_seq_len: int | None  # the training context (informational)
    vocab_size: int  # rows of the gene embedding, special tokens included

    @classmethod
    def from_args(cls, raw: dict[str, Any], vocab_size: int) -> ScGPTConfig:
        try:
            hidden, n_layers, n_heads, d_hid = (
                int(raw[key]) for key in ("embsize", "nlayers", "nheads", "d_hid")
            )
        except KeyError as err:
            raise CheckpointError(f"{ARGS}: missing key {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{ARGS}: sizes must be integers ({err})") from None
        if min(hidden, n_layers, n_heads, d_hid) < 1 or hidden % n_heads:
            raise CheckpointError(
                f"{ARGS}: embsize {hidden} must be a positive multiple of nheads {n_heads}, "
                f"nlayers and d_hid positive"
            )
        # The official embedding path builds a continuous-value, post-norm model whatever
        # args.json says; a checkpoint trained otherwise would be served wrongly by it.
        style = raw.get("input_emb_style", "continuous")
        if style != "continuous":
            raise CheckpointError(
                f"{ARGS}: input_emb_style {style!r} unsupported; the official cell-embedding "
                "path runs the 'continuous' value encoder only"
            )
        if raw.get("pre_norm", False):
            raise CheckpointError(
                f"{ARGS}: pre_norm is true; the official cell-embedding path builds post-norm "
                "blocks, so this checkpoint cannot be served as the official embedding"
            )
        max_seq_len = raw.get("max_seq_len")
        return cls(
            hidden=hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            d_hid=d_hid,
            pad_token=str(raw.get("pad_token", "<pad>")),
            pad_value=float(raw.get("pad_value", -2)),
            max_seq_len=int(max_seq_len) if max_seq_len is not None else None,
            vocab_size=vocab_size,
        )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every encoder tensor the release must hold, by its name in the release."""
        d, h = self.hidden, self.d_hid
        shapes: dict[str, tuple[int, ...]] = {
            "encoder.embedding.weight": (self.vocab_size, d),
            "encoder.enc_norm.weight": (d,),
            "encoder.enc_norm.bias": (d,),
            "value_encoder.linear1.weight": (d, 1),
            "value_encoder.linear1.bias": (d,),
            "value_encoder.linear2.weight": (d, d),
            "value_encoder.linear2.bias": (d,),
            "value_encoder.norm.weight": (d,),
            "value_encoder.norm.bias": (d,),
        }
        for i in range(self.n_layers):
            p = f"transformer_encoder.layers.{i}"
            shapes |= {
                f"{p}.self_attn.Wqkv.weight": (3 * d, d),
                f"{p}.self_attn.Wqkv.bias": (3 * d,),
                f"{p}.self_attn.out_proj.weight": (d, d),
                f"{p}.self_attn.out_proj.bias": (d,),
                f"{p}.linear1.weight": (h, d),
                f"{p}.linear1.bias": (h,),
                f"{p}.linear2.weight": (d, h),
                f"{p}.linear2.bias": (d,),
            }
            for norm in ("norm1", "norm2"):
                shapes |= {f"{p}.{norm}.weight": (d,), f"{p}.{norm}.bias": (d,)}
        return shapes


@dataclass
class ScGPTCheckpoint:
    folder: Path
    config: ScGPTConfig
    vocabulary: dict[str, int]  # token -> id, the specials included
    encoder_state: dict[str, torch.Tensor]  # names of the service's encoder (in_proj_*)
    digest: str
    demo_weights: bool


def find_folder(path: Path) -> Path:
    """The release folder: ``path`` itself, or the folder of a file inside it."""
    files = (ARGS, VOCABULARY, WEIGHTS)
    return release_folder(
        path, files, "an scGPT release folder", f"{ARGS}, {VOCABULARY} and {WEIGHTS}"
    )


def load_vocabulary(folder: Path) -> dict[str, int]:
    """Token -> id; ids must be 0..n-1, each once (the official vocabulary requires it).
    Special tokens the file lacks are appended after the highest id, as upstream does."""
    file = folder / VOCABULARY
    raw = read_json_object(file)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
        raise CheckpointError(f"{file}: expected a JSON object gene symbol -> integer id")
    if sorted(raw.values()) != list(range(len(raw))):
        raise CheckpointError(f"{file}: token ids must be 0..{len(raw) - 1}, each used once")
    vocabulary = dict(raw)
    for token in SPECIAL_TOKENS:
        vocabulary.setdefault(token, len(vocabulary))
    return vocabulary


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    raw = load_weights_only(file, "expected a bare state dict")
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{file}: expected a bare state dict (tensor name -> tensor)")
    return raw


def encoder_state(
    raw: dict[str, torch.Tensor], config: ScGPTConfig, source: Path
) -> dict[str, torch.Tensor]:
    """The encoder's tensors, checked against ``config`` and renamed for the service's blocks.

    A release saved from a model without flash-attn spells the fused projection
    ``in_proj_weight`` / ``in_proj_bias``; either spelling is accepted, not both.
    """
    state = {}
    for key, tensor in raw.items():
        if key.startswith(ENCODER_PREFIXES):
            name = key.replace("self_attn.in_proj_", "self_attn.Wqkv.")
            if name in state:
                raise CheckpointError(f"{source}: both {name} and its in_proj_ spelling present")
            state[name] = tensor
    expected = config.expected_shapes()
    missing = [k for k in expected if k not in state]
    if missing:
        hint = (
            " (its keys carry a 'module.' prefix: save the unwrapped model's state dict)"
            if any(k.startswith("module.") for k in raw)
            else ""
        )
        raise CheckpointError(
            f"{source}: missing encoder tensor(s) {listed(missing, NAMES_LISTED)}{hint}"
        )
    misshaped = [
        f"{k} is {list(state[k].shape)}, expected {list(shape)}"
        for k, shape in expected.items()
        if tuple(state[k].shape) != shape
    ]
    if misshaped:
        raise CheckpointError(
            f"{source}: misshaped encoder tensor(s) {listed(misshaped, NAMES_LISTED)} "
            f"({ARGS}: embsize {config.hidden}, d_hid {config.d_hid}, "
            f"{config.vocab_size} tokens in {VOCABULARY})"
        )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        deeper = sorted({int(m.group(1)) for k in unexpected if (m := LAYER_KEY.match(k))})
        why = (
            f"blocks {deeper} beyond nlayers {config.n_layers} of {ARGS}"
            if deeper
            else "not part of the architecture"
        )
        raise CheckpointError(
            f"{source}: unexpected tensor(s) {listed(unexpected, NAMES_LISTED)}: {why}"
        )
    not_float = [k for k, t in state.items() if not t.is_floating_point()]
    if not_float:
        raise CheckpointError(
            f"{source}: non-floating-point tensor(s) {listed(not_float, NAMES_LISTED)}"
        )
    return {k.replace("self_attn.Wqkv.", "self_attn.in_proj_"): t.float() for k, t in state.items()}


def load_checkpoint(path: Path) -> ScGPTCheckpoint:
    folder = find_folder(path)
    args = read_json_object(folder / ARGS)
    vocabulary = load_vocabulary(folder)
    config = ScGPTConfig.from_args(args, len(vocabulary))
    if config.pad_token not in vocabulary:
        raise CheckpointError(f"{ARGS}: pad_token {config.pad_token!r} is not in {VOCABULARY}")
    state = encoder_state(_read_weights(folder / WEIGHTS), config, folder / WEIGHTS)
    return ScGPTCheckpoint(
        folder=folder,
        config=config,
        vocabulary=vocabulary,
        encoder_state=state,
        digest=files_digest([folder / WEIGHTS, folder / ARGS, folder / VOCABULARY]),
        demo_weights=bool(args.get("demo_weights", False)),
    )
