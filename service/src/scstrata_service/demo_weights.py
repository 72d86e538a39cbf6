"""What every family's ``fabricate`` module shares: seeded random tensors under a release's
tensor names, and real gene symbols for a demo vocabulary (RANDOM DEMO WEIGHTS, never a
model)."""

from __future__ import annotations

from importlib import resources

import torch

# the package's copy of scFoundation's 19,264-gene list (symbol in its first column)
GENE_LIST = "OS_scRNA_gene_index.19264.tsv"


def gene_symbols(n: int) -> list[str]:
    """The first ``n`` of 19,264 real human gene symbols, so demo data look like real data."""
    with (resources.files("scstrata_service") / "data" / GENE_LIST).open() as fh:
        symbols = [line.split("\t")[0] for line in fh.read().splitlines()[1:]]
    if n > len(symbols):
        raise ValueError(f"n_genes: at most {len(symbols)} symbols are available, not {n}")
    return symbols[:n]


class RandomTensors:
    """Tensors drawn from one seeded generator, named as the release names them; the draws
    follow the calls, so the same calls in the same order give the same checkpoint."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def randn(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator) * scale

    def linear(self, prefix: str, n_in: int, n_out: int, bias: bool = True) -> dict:
        """``prefix.weight`` [n_out, n_in] at fan-in scale, and ``prefix.bias``."""
        out = {f"{prefix}.weight": self.randn(n_out, n_in, scale=n_in**-0.5)}
        if bias:
            out[f"{prefix}.bias"] = self.randn(n_out, scale=0.1)
        return out

    def norm(self, prefix: str, dim: int) -> dict:
        """A LayerNorm's ``weight`` (near 1) and ``bias`` (near 0), both visibly not the
        defaults, so a norm the loader dropped shows up in the tests."""
        return {
            f"{prefix}.weight": 1 + self.randn(dim, scale=0.1),
            f"{prefix}.bias": self.randn(dim, scale=0.1),
        }

    def gene_value_encoders(self, gene: str, value: str, vocab_size: int, dim: int) -> dict:
        """The input encoders of scGPT's release layout, which Tahoe-X1's inherited under other
        prefixes: ``gene`` embedding and its norm, the flag embedding, and the ``value``
        encoder (linear1, linear2, norm), drawn in that order."""
        w = {f"{gene}.embedding.weight": self.randn(vocab_size, dim)}
        w |= self.norm(f"{gene}.enc_norm", dim)
        w["flag_encoder.weight"] = self.randn(2, dim)
        w |= self.linear(f"{value}.linear1", 1, dim) | self.linear(f"{value}.linear2", dim, dim)
        return w | self.norm(f"{value}.norm", dim)
