"""Write a small Geneformer checkpoint folder in the released layout.

RANDOM DEMO WEIGHTS. The folder has the real structure (a transformers ``BertForMaskedLM``
saved with ``save_pretrained``, the token dictionary, gene-median and Ensembl-mapping
pickles under the official file names of the chosen series) so the loader runs exactly as
with a release, but its numbers mean nothing biologically. ``config.json`` carries
``"scstrata_demo_weights": true``, which the service shows as ``demo_weights`` on the card.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from scstrata_service.families.geneformer.checkpoint import DEMO_FLAG, RELEASE_INPUT_SIZE

# official pickle names per series (V1 "gc30M" = ~30M cells, V2 "gc104M" = ~104M cells)
CORPUS = {"V1": "gc30M", "V2": "gc104M"}
SPECIALS = {"V1": ("<pad>", "<mask>"), "V2": ("<pad>", "<mask>", "<cls>", "<eos>")}
# intermediate size / hidden size of the releases (V1 6L: 512/256; V2: 4x)
FFN_RATIO = {"V1": 2, "V2": 4}


def ensembl_ids(n: int, rng: np.random.Generator) -> list[str]:
    """Distinct human-Ensembl-like gene ids (ENSG + 11 digits)."""
    numbers = rng.choice(300_000, size=n, replace=False)
    return [f"ENSG{int(k):011d}" for k in numbers]


def fabricate_checkpoint(
    folder: Path,
    *,
    version: str = "V2",
    hidden: int = 32,
    n_layers: int = 3,
    n_heads: int = 4,
    n_genes: int = 400,
    seed: int = 0,
    input_size: int | None = None,
    hidden_act: str = "relu",
    layer_norm_eps: float = 1e-12,
    n_aliases: int = 3,
) -> Path:
    """Write the checkpoint into ``folder`` and return the folder.

    ``input_size`` (= ``max_position_embeddings``) defaults to the series' released size.
    ``n_aliases`` extra ids in the mapping pickle map onto existing genes (the official
    tokenizer sums columns that collapse onto one gene).
    """
    from transformers import BertConfig, BertForMaskedLM

    if version not in CORPUS:
        raise ValueError(f"version must be 'V1' or 'V2', got {version!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = ensembl_ids(n_genes + n_aliases, rng)
    genes, aliases = ids[:n_genes], ids[n_genes:]

    specials = SPECIALS[version]
    token_dictionary = {token: i for i, token in enumerate(specials)}
    token_dictionary.update({gene: len(specials) + i for i, gene in enumerate(genes)})
    # medians as numpy scalars, as a numpy-computed pickle would hold them; a few repeat
    # so that equal rank values (ties) occur in tests
    medians = np.exp(rng.normal(0.0, 1.0, n_genes))
    medians[1::7] = medians[0]
    gene_medians = {gene: np.float64(m) for gene, m in zip(genes, medians)}
    mapping = {gene: gene for gene in genes}
    mapping.update({alias: genes[i] for i, alias in enumerate(aliases)})

    corpus = CORPUS[version]
    for name, obj in (
        (f"token_dictionary_{corpus}.pkl", token_dictionary),
        (f"gene_median_dictionary_{corpus}.pkl", gene_medians),
        (f"ensembl_mapping_dict_{corpus}.pkl", mapping),
    ):
        with open(folder / name, "wb") as fh:
            pickle.dump(obj, fh)

    config = BertConfig(
        vocab_size=len(token_dictionary),
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=FFN_RATIO[version] * hidden,
        hidden_act=hidden_act,
        max_position_embeddings=input_size or RELEASE_INPUT_SIZE[version],
        layer_norm_eps=layer_norm_eps,
        pad_token_id=token_dictionary["<pad>"],
        type_vocab_size=2,
        initializer_range=0.2,  # larger than BERT's 0.02: attention far from uniform
        **{DEMO_FLAG: True},
    )
    torch.manual_seed(seed)
    model = BertForMaskedLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # BERT initialises biases to 0 and LayerNorm to (1, 0): move them so that a
        # dropped bias, a missing LayerNorm or a wrong token-type row shows up in tests
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
        token_type = model.bert.embeddings.token_type_embeddings.weight
        token_type.add_(torch.randn(token_type.shape, generator=generator) * 0.2)
    model.save_pretrained(folder)
    return folder
