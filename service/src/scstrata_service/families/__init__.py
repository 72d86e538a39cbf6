"""The families table: family name -> its package, imported only when used.

Each package (``families/<name>/``) has checkpoint / tokenizer / encoder / fabricate modules
and exposes ``load()`` and ``fabricate()`` (contract.Family). Adding a family = its folder and
one line here (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import cast

from scstrata_service.contract import Family, ModelBackend

FAMILIES: dict[str, str] = {
    "scfoundation": "scstrata_service.families.scfoundation",
    "tahoe": "scstrata_service.families.tahoe",
    "geneformer": "scstrata_service.families.geneformer",
    "scgpt": "scstrata_service.families.scgpt",
}


def family(name: str) -> Family:
    """The family's package (imported now); ``ValueError`` naming the known families."""
    if name not in FAMILIES:
        raise ValueError(f"family: unknown {name!r}; known: {sorted(FAMILIES)}")
    return cast(Family, importlib.import_module(FAMILIES[name]))


def load(family_name: str, name: str, path: Path, **settings: object) -> ModelBackend:
    """Serve the checkpoint at ``path`` as model ``name`` (settings: the family's ``load``
    keywords and the device settings of runtime/device.py)."""
    return family(family_name).load(name, Path(path), **settings)


def fabricate(
    family_name: str,
    folder: Path,
    *,
    hidden: int = 64,
    n_layers: int = 6,
    n_heads: int = 4,
    seed: int = 0,
) -> Path:
    """A small checkpoint of the family in its published layout with RANDOM DEMO WEIGHTS
    (for the demo, benchmarks and trying the service); returns the folder to serve."""
    folder = family(family_name).fabricate(
        Path(folder), hidden=hidden, n_layers=n_layers, n_heads=n_heads, seed=seed
    )
    # safetensors writes 0600: the container's user (another uid, over a read-only mount)
    # could not read the demo weights
    for file in folder.rglob("*"):
        if file.is_file():
            file.chmod(file.stat().st_mode | 0o444)
    return folder
