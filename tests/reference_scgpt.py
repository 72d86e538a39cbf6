"""An independent, one-cell-at-a-time scGPT reference (test-only, float64 numpy).

Written from the published architecture and cell-embedding preprocessing (docs/models.md,
"scGPT"), sharing no code with the service: it reads the release folder with json and
``torch.load`` only, builds one cell's tokens (``<cls>`` with ``pad_value`` first, then the
expressed vocabulary genes in column order with their per-cell quantile bins) and runs the
post-norm blocks with explicit dense attention in float64.

Where upstream draws a bin at random (a value equal to repeated quantile edges) the reference
computes the range of bins the value may take; a test either asks for the middle of it or
passes the bins the service drew, after checking they lie in that range.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * w + b


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


class ScGPTReference:
    def __init__(self, folder: Path):
        folder = Path(folder)
        self.args = json.loads((folder / "args.json").read_text())
        self.vocab = json.loads((folder / "vocab.json").read_text())
        state = torch.load(folder / "best_model.pt", map_location="cpu", weights_only=True)
        self.w = {k.replace("in_proj_", "Wqkv."): v.double().numpy() for k, v in state.items()}
        self.d, self.heads = self.args["embsize"], self.args["nheads"]
        self.depth = self.args["nlayers"]

    # ---- preprocessing ------------------------------------------------------------------
    def expressed(self, row: np.ndarray, genes: list[str]) -> tuple[list[int], np.ndarray]:
        """Token ids and float32 counts of the cell's non-zero vocabulary genes."""
        specials = {"<pad>", "<cls>", "<eoc>"}
        pairs = [
            (self.vocab[g], v)
            for g, v in zip(genes, row)
            if v != 0 and g in self.vocab and g not in specials
        ]
        return [i for i, _ in pairs], np.array([v for _, v in pairs], dtype=np.float32)

    @staticmethod
    def bin_range(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per value, the lowest and highest bin upstream may give it (equal unless tied)."""
        edges = np.quantile(values, np.linspace(0.0, 1.0, 50))
        below = np.array([int((edges < v).sum()) for v in values])
        at_or_below = np.array([int((edges <= v).sum()) for v in values])
        # an untied value has one bin; one equal to m edges may take any of m bins
        return np.minimum(below + 1, at_or_below), at_or_below

    def tokens(
        self,
        row: np.ndarray,
        genes: list[str],
        bins: dict[int, float] | None = None,
        subset: set[int] | None = None,
    ) -> tuple[list[int], np.ndarray]:
        """One cell's token ids and values: ``bins`` (token id -> bin) where upstream would
        draw, else the middle of the range (lower of two); ``subset`` = ids kept if long."""
        ids, raw = self.expressed(row, genes)
        lowest, highest = self.bin_range(raw)  # over the whole cell: before any subset
        kept = [j for j, i in enumerate(ids) if subset is None or i in subset]
        values = []
        for j in kept:
            lo, hi = lowest[j], highest[j]
            if bins is not None:
                assert lo <= bins[ids[j]] <= hi, (ids[j], lo, bins[ids[j]], hi)
                values.append(float(bins[ids[j]]))
            else:
                values.append(float(lo + (hi - lo) // 2))
        ids = [ids[j] for j in kept]
        return [self.vocab["<cls>"]] + ids, np.array([self.args["pad_value"]] + values, float)

    # ---- model --------------------------------------------------------------------------
    def _attention(self, x: np.ndarray, p: str) -> np.ndarray:
        w, d, heads = self.w, self.d, self.heads
        n, hd = len(x), d // heads
        qkv = x @ w[f"{p}.Wqkv.weight"].T + w[f"{p}.Wqkv.bias"]
        q, k, v = (qkv[:, j * d : (j + 1) * d].reshape(n, heads, hd) for j in range(3))
        out = np.empty((n, heads, hd))
        for h in range(heads):
            scores = q[:, h] @ k[:, h].T / np.sqrt(hd)
            scores = np.exp(scores - scores.max(1, keepdims=True))
            out[:, h] = (scores / scores.sum(1, keepdims=True)) @ v[:, h]
        return out.reshape(n, d) @ w[f"{p}.out_proj.weight"].T + w[f"{p}.out_proj.bias"]

    def states(self, ids: list[int], values: np.ndarray) -> list[np.ndarray]:
        """Token states at layers 0..L (post-norm blocks, no final norm)."""
        w = self.w
        gene = _layer_norm(
            w["encoder.embedding.weight"][ids],
            w["encoder.enc_norm.weight"],
            w["encoder.enc_norm.bias"],
        )
        v = np.minimum(values, 512.0)[:, None]
        v = _relu(v @ w["value_encoder.linear1.weight"].T + w["value_encoder.linear1.bias"])
        v = v @ w["value_encoder.linear2.weight"].T + w["value_encoder.linear2.bias"]
        v = _layer_norm(v, w["value_encoder.norm.weight"], w["value_encoder.norm.bias"])
        x = gene + v
        out = [x]
        for i in range(self.depth):
            p = f"transformer_encoder.layers.{i}"
            x = _layer_norm(
                x + self._attention(x, f"{p}.self_attn"),
                w[f"{p}.norm1.weight"],
                w[f"{p}.norm1.bias"],
            )
            h = _relu(x @ w[f"{p}.linear1.weight"].T + w[f"{p}.linear1.bias"])
            h = h @ w[f"{p}.linear2.weight"].T + w[f"{p}.linear2.bias"]
            x = _layer_norm(x + h, w[f"{p}.norm2.weight"], w[f"{p}.norm2.bias"])
            out.append(x)
        return out

    def embed_tokens(self, ids: list[int], values: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Per layer: {'official', 'cls', 'mean'} of one cell's tokens."""
        return [
            {"cls": x[0], "mean": x[1:].mean(0), "official": x[0] / np.linalg.norm(x[0])}
            for x in self.states(ids, values)
        ]

    def embed_cell(self, row, genes, bins=None, subset=None) -> list[dict[str, np.ndarray]]:
        return self.embed_tokens(*self.tokens(row, genes, bins, subset))
