"""Model families: one folder each (config parsing, checkpoint loading, tokenizer, encoder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scstrata_service.backend import ModelBackend


def _load_scfoundation(name: str, path: Path, **kwargs: object) -> ModelBackend:
    from scstrata_service.families.scfoundation.backend import ScFoundationBackend

    return ScFoundationBackend.load(name, path, **kwargs)


def _load_geneformer(name: str, path: Path, **kwargs: object) -> ModelBackend:
    from scstrata_service.families.geneformer.backend import GeneformerBackend

    return GeneformerBackend.load(name, path, **kwargs)


def _load_tahoe(name: str, path: Path, **kwargs: object) -> ModelBackend:
    from scstrata_service.families.tahoe.backend import TahoeBackend

    return TahoeBackend.load(name, path, **kwargs)


# family name -> loader(name, checkpoint path, **settings)
FAMILIES: dict[str, Callable[..., ModelBackend]] = {
    "scfoundation": _load_scfoundation,
    "geneformer": _load_geneformer,
    "tahoe": _load_tahoe,
}
