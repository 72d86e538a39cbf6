"""An independent, one-cell-at-a-time scFoundation reference (test-only).

Written from the published facts (../shared/docs/models.md and the official
`get_embedding.py` flow), deliberately sharing no code with the service: it reads the
checkpoint with plain torch, rebuilds the dense 19,266-value input of one cell, gathers the
values > 0, computes the auto-discretisation embedding by its formula, and runs the blocks
through torch's own ``nn.TransformerEncoderLayer`` forward (its fused inference path on CPU).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class ScFoundationReference:
    def __init__(self, checkpoint: Path, version: str = "cell"):
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True)[version]
        cfg = dict(raw["config"]["model_config"]["mae_autobin"])
        cfg.update(raw["config"]["dataset_config"]["rnaseq"])
        self.cfg = cfg
        self.w = {
            k[len("model.") :]: v.double() if v.is_floating_point() else v
            for k, v in raw["state_dict"].items()
        }
        with open(Path(checkpoint).parent / "OS_scRNA_gene_index.19264.tsv") as fh:
            self.vocab = [row["gene_name"] for row in csv.DictReader(fh, delimiter="\t")]
        self.index = {g: i for i, g in enumerate(self.vocab)}
        enc = cfg["encoder"]
        self.dim, self.depth, self.heads = enc["hidden_dim"], enc["depth"], enc["heads"]
        self.blocks = []
        for i in range(self.depth):
            block = (
                torch.nn.TransformerEncoderLayer(
                    self.dim, self.heads, 4 * self.dim, batch_first=True
                )
                .double()
                .eval()
            )
            prefix = f"encoder.transformer_encoder.{i}."
            block.load_state_dict(
                {k[len(prefix) :]: v for k, v in self.w.items() if k.startswith(prefix)}
            )
            self.blocks.append(block)

    def inputs(self, row: np.ndarray, genes: list[str], pre_normalized: bool, tgthighres: str):
        full = np.zeros(len(self.vocab))
        for gene, value in zip(genes, row):
            if gene in self.index:
                full[self.index[gene]] = value
        total = full.sum()
        values = full if pre_normalized else np.log1p(full / total * 1e4)
        kind, k = tgthighres[0], float(tgthighres[1:])
        target = {"t": k, "f": np.log10(total * k), "a": np.log10(total) + k}[kind]
        vec = torch.tensor(list(values) + [target, np.log10(total)], dtype=torch.float32)
        keep = vec > 0
        return vec[keep].double(), torch.arange(len(vec))[keep]

    def token_embedding(self, v: torch.Tensor) -> torch.Tensor:
        w = self.w
        h = F.leaky_relu(v[:, None] @ w["token_emb.mlp.weight"].T + w["token_emb.mlp.bias"], 0.1)
        h = self.cfg["bin_alpha"] * h + h @ w["token_emb.mlp2.weight"].T + w["token_emb.mlp2.bias"]
        return torch.softmax(h, dim=-1) @ w["token_emb.emb.weight"]

    @torch.no_grad()
    def embed_cell(self, row, genes, pre_normalized=False, tgthighres="t4") -> dict[int, dict]:
        """{layer: {pooling: vector}} for layers 0..L (L after the final norm), float64."""
        values, positions = self.inputs(row, genes, pre_normalized, tgthighres)
        x = (self.token_embedding(values) + self.w["pos_emb.weight"][positions])[None]
        states = {0: x[0]}
        for k, block in enumerate(self.blocks, start=1):
            x = block(x, src_key_padding_mask=torch.zeros(1, x.shape[1], dtype=torch.bool))
            states[k] = x[0]
        states[self.depth] = F.layer_norm(
            states[self.depth],
            (self.dim,),
            self.w["encoder.norm.weight"],
            self.w["encoder.norm.bias"],
        )
        out = {}
        for k, h in states.items():
            pooled = {"S": h[-1], "T": h[-2], "max": h[:-2].max(0).values, "mean": h[:-2].mean(0)}
            pooled["official"] = torch.cat(
                [pooled["S"], pooled["T"], pooled["max"], pooled["mean"]]
            )
            out[k] = {p: t.numpy() for p, t in pooled.items()}
        return out
