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


def _load_scgpt(name: str, path: Path, **kwargs: object) -> ModelBackend:
    from scstrata_service.families.scgpt.backend import ScGPTBackend

    return ScGPTBackend.load(name, path, **kwargs)


# family name -> loader(name, checkpoint path, **settings)
FAMILIES: dict[str, Callable[..., ModelBackend]] = {
    "scfoundation": _load_scfoundation,
    "geneformer": _load_geneformer,
    "tahoe": _load_tahoe,
    "scgpt": _load_scgpt,
}


def fabricate(
    family: str, folder: Path, *, hidden: int = 64, depth: int = 6, heads: int = 4, seed: int = 0
) -> Path:
    """A small checkpoint of ``family`` in its published layout with RANDOM DEMO WEIGHTS
    (for the demo, benchmarks and trying the service); returns the folder to serve."""
    folder = Path(folder)
    if family == "scfoundation":
        from scstrata_service.families.scfoundation.fabricate import fabricate_checkpoint

        fabricate_checkpoint(folder, hidden=hidden, depth=depth, heads=heads, seed=seed)
    elif family == "tahoe":
        from scstrata_service.families.tahoe.fabricate import fabricate_checkpoint as tahoe

        tahoe(
            folder,
            d_model=hidden,
            n_layers=depth,
            n_heads=heads,
            vocab_genes=4000,
            max_length=2048,
            seed=seed,
        )
    elif family == "geneformer":
        from scstrata_service.families.geneformer.fabricate import fabricate_checkpoint as gf

        gf(folder, hidden=hidden, n_layers=depth, heads=heads, n_genes=4000, seed=seed)
    elif family == "scgpt":
        from scstrata_service.families.scgpt.fabricate import fabricate_checkpoint as scgpt

        scgpt(folder, hidden=hidden, n_layers=depth, n_heads=heads, n_genes=4000, seed=seed)
    else:
        raise ValueError(f"family: unknown {family!r}; known: {sorted(FAMILIES)}")
    # safetensors writes 0600: the container's user (another uid, over a read-only mount)
    # could not read the demo weights
    for file in folder.rglob("*"):
        if file.is_file():
            file.chmod(file.stat().st_mode | 0o444)
    return folder
