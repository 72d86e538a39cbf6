"""An independent, one-cell-at-a-time Tahoe-X1 reference (test-only, float64 numpy).

Written from the published architecture and preprocessing (docs/models.md, "Tahoe-X1"),
sharing no code with the service: it reads the release folder with yaml/json/safetensors,
builds one cell's token list (``<cls>`` first, expressed vocabulary genes in column order,
per-cell quantile binning), and runs the pre-norm blocks with explicit dense
attention in float64. The official code itself (a composer-free copy of ``tahoe_x1``) was
also run against the service once; see docs/models.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.numpy import load_file
from scipy.special import erf


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0))),
}


class TahoeReference:
    def __init__(self, folder: Path):
        folder = Path(folder)
        self.model = yaml.safe_load((folder / "model_config.yml").read_text())
        self.collator = yaml.safe_load((folder / "collator_config.yml").read_text())
        self.vocab = json.loads((folder / "vocab.json").read_text())
        raw = load_file(str(folder / "model.safetensors"))
        self.w = {k.removeprefix("model."): v.astype(np.float64) for k, v in raw.items()}
        m = self.model
        self.d, self.heads, self.depth = m["d_model"], m["n_heads"], m["n_layers"]
        self.kv_heads = m["attn_config"].get("kv_n_heads", self.heads)
        self.act = ACTIVATIONS[m["transformer_activation"]]
        self.value_act = ACTIVATIONS[m["expression_encoder"]["activation"]]
        self.eps = m["norm_config"]["eps"]

    # ---- preprocessing ------------------------------------------------------------------
    def tokens(
        self, row: np.ndarray, genes: list[str], max_length: int | None = None, subset=None
    ) -> tuple[list[int], np.ndarray]:
        """Gene ids and values of one cell; ``subset`` = vocabulary ids to keep if too long."""
        c = self.collator
        keep_n = c.get("keep_first_n_tokens", 1)
        ids = [self.vocab[g] for g, v in zip(genes, row) if v > 0 and g in self.vocab]
        raw = np.array([v for g, v in zip(genes, row) if v > 0 and g in self.vocab], float)
        values = raw.copy()
        rest = raw[keep_n - 1 :]
        if c.get("do_binning", True) and len(rest):
            # Bin edges are float32 torch.quantile values upstream; float64 edges put a value
            # lying on an edge in the neighbouring bin now and then, so compute them as upstream.
            row32 = torch.tensor(rest, dtype=torch.float32)
            grades = torch.linspace(0.0, 1.0, c["num_bins"] - 1, dtype=torch.float32)
            edges = torch.quantile(row32, grades).numpy()
            values[keep_n - 1 :] = np.searchsorted(edges, rest.astype(np.float32), side="left") + 1
        elif c.get("log_transform", False) and len(rest):
            values[keep_n - 1 :] = np.log1p(rest / (rest.sum() + 1e-9) * c["target_sum"])
        max_length = max_length or c["max_length"]
        if 1 + len(ids) > max_length:
            n_rest = max_length - keep_n
            if subset is None:  # "top": highest raw value, ties by vocabulary id
                order = sorted(range(keep_n - 1, len(ids)), key=lambda i: (-raw[i], ids[i]))
                chosen = set(order[:n_rest])
            else:
                chosen = {i for i in range(keep_n - 1, len(ids)) if ids[i] in set(subset)}
            picked = list(range(keep_n - 1)) + sorted(chosen)
            ids, values = [ids[i] for i in picked], values[picked]
        cls = self.vocab["<cls>"]
        return [cls] + ids, np.concatenate([[float(c["pad_value"])], values])

    # ---- model --------------------------------------------------------------------------
    def _attention(self, x: np.ndarray, p: str) -> np.ndarray:
        w = self.w
        n, d = x.shape
        hd = d // self.heads
        qkv = x @ w[f"{p}.Wqkv.weight"].T + w[f"{p}.Wqkv.bias"]
        q = qkv[:, :d].reshape(n, self.heads, hd)
        k = qkv[:, d : d + self.kv_heads * hd].reshape(n, self.kv_heads, hd)
        v = qkv[:, d + self.kv_heads * hd :].reshape(n, self.kv_heads, hd)
        group = self.heads // self.kv_heads
        out = np.empty((n, self.heads, hd))
        for h in range(self.heads):
            scores = q[:, h] @ k[:, h // group].T / np.sqrt(hd)
            scores = np.exp(scores - scores.max(1, keepdims=True))
            out[:, h] = (scores / scores.sum(1, keepdims=True)) @ v[:, h // group]
        return out.reshape(n, d) @ w[f"{p}.out_proj.weight"].T + w[f"{p}.out_proj.bias"]

    def states(self, ids: list[int], values: np.ndarray) -> list[np.ndarray]:
        """Token states at layers 0..L (L after the final norm)."""
        w, e = self.w, self.eps
        g = _layer_norm(
            w["gene_encoder.embedding.weight"][ids],
            w["gene_encoder.enc_norm.weight"],
            w["gene_encoder.enc_norm.bias"],
            1e-5,
        )
        v = np.minimum(values, self.model["expression_encoder"]["max_value"])[:, None]
        v = self.value_act(
            v @ w["expression_encoder.linear1.weight"].T + w["expression_encoder.linear1.bias"]
        )
        v = v @ w["expression_encoder.linear2.weight"].T + w["expression_encoder.linear2.bias"]
        v = _layer_norm(
            v, w["expression_encoder.norm.weight"], w["expression_encoder.norm.bias"], 1e-5
        )
        x = g + v
        out = [x]
        for i in range(self.depth):
            p = f"transformer_encoder.layers.{i}"
            h = _layer_norm(x, w[f"{p}.norm1.weight"], w[f"{p}.norm1.bias"], e)
            x = x + self._attention(h, f"{p}.self_attn")
            h = _layer_norm(x, w[f"{p}.norm2.weight"], w[f"{p}.norm2.bias"], e)
            h = self.act(h @ w[f"{p}.up_proj.weight"].T + w[f"{p}.up_proj.bias"])
            x = x + h @ w[f"{p}.down_proj.weight"].T + w[f"{p}.down_proj.bias"]
            out.append(x)
        out[-1] = _layer_norm(
            x, w["transformer_encoder.norm.weight"], w["transformer_encoder.norm.bias"], e
        )
        return out

    def embed_cell(
        self, row: np.ndarray, genes: list[str], max_length: int | None = None, subset=None
    ) -> list[dict[str, np.ndarray]]:
        """Per layer: {'official', 'cls', 'mean'} for one cell."""
        ids, values = self.tokens(row, genes, max_length, subset)
        style = self.model.get("cell_emb_style", "cls")
        result = []
        for x in self.states(ids, values):
            cell = x[0] if style == "cls" else x.mean(0)  # avg-pool: <cls> included
            result.append(
                {"cls": x[0], "mean": x[1:].mean(0), "official": cell / np.linalg.norm(cell)}
            )
        return result
