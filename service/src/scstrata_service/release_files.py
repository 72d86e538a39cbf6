"""Reading a checkpoint's files, for every family: the folder a path names, JSON objects, and
weights through ``torch.load(weights_only=True)``; each error a :class:`CheckpointError`
naming the file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scstrata_service.contract import CheckpointError


def folder_of(path: Path) -> Path:
    """A checkpoint folder given as the folder itself or as any file inside it."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def release_folder(path: Path, required: Sequence[str], what: str, expected: str) -> Path:
    """:func:`folder_of` ``path``, which must hold every ``required`` file; the error says
    it is not ``what`` (e.g. "an scGPT release folder") and lists what is ``expected``."""
    folder = folder_of(path)
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder} is not {what}: missing {missing} (expected {expected})")
    return folder


def read_json_object(file: Path) -> dict[str, Any]:
    """A JSON file whose top level is an object."""
    try:
        raw = json.loads(Path(file).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not JSON ({err})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return raw


def load_weights_only(file: Path, fix: str) -> Any:
    """``torch.load(file, weights_only=True)`` on the CPU: tensors and plain values only, never
    arbitrary pickled objects; a file it refuses is a :class:`CheckpointError` ending in
    ``fix`` (what the file should be instead)."""
    import torch

    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused: objects other than tensors and plain values
        raise CheckpointError(
            f"{file}: cannot be read with torch.load(weights_only=True) "
            f"({err.__class__.__name__}); {fix}"
        ) from None
