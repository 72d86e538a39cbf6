"""The Python API has what the CLI has, and says when genes were dropped (issue 17, 1 and 5)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import anndata as ad
import numpy as np
import pytest

from scstrata_client import Client, UnmappedGenesWarning

from helpers import make_cells


@pytest.fixture
def adata(vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=6, n_genes=150, seed=11)
    data = ad.AnnData(np.zeros(counts.shape, dtype=np.float32))  # X is not the counts
    data.layers["counts"] = counts
    data.var_names = [f"id{i}" for i in range(len(genes))]
    data.var["symbol"] = list(genes)
    return data, counts, list(genes)


def test_embed_takes_counts_layer_gene_column_and_key_added(service_url, adata):
    data, counts, genes = adata
    with Client(service_url, cache=False, progress=False) as client:
        want = client.embed(counts, genes, model="scf", layers=[0, -1])
        got = client.embed(
            data,
            model="scf",
            layers=[0, -1],
            counts_layer="counts",
            gene_column="symbol",
            write_to=data,
            key_added="emb",
        )
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
        np.testing.assert_array_equal(data.obsm[f"emb_layer{k}"], want[k])


def test_embed_names_a_missing_layer_or_column(service_url, adata):
    data, _, _ = adata
    with Client(service_url, cache=False, progress=False) as client:
        with pytest.raises(ValueError, match=r"counts_layer: no layer 'raw' \(has: counts\)"):
            client.embed(data, model="scf", counts_layer="raw")
        with pytest.raises(ValueError, match=r"gene_column: adata\.var has no column 'gene_ids'"):
            client.embed(data, model="scf", gene_column="gene_ids")


def test_dropped_genes_warn(service_url, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=4, n_genes=98, seed=5)  # + 2 unknown
    with Client(service_url, cache=False, progress=False) as client:
        with pytest.warns(UnmappedGenesWarning, match=r"2 of 100 genes \(2\.0%\)"):
            client.embed(counts, genes, model="scf", layers=-1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # all genes known: no warning
            client.embed(counts[:, :-2], list(genes[:-2]), model="scf", layers=-1)


def test_the_cli_warns_on_one_stderr_line(service_url, vocabulary, tmp_path):
    counts, genes = make_cells(vocabulary, n_cells=4, n_genes=98, seed=6)  # + 2 unknown
    data = ad.AnnData(counts.astype(np.float32))
    data.var_names = list(genes)
    path = tmp_path / "cells.h5ad"
    data.write_h5ad(path)
    command = [sys.executable, "-m", "scstrata_client.cli", "embed", "--url", service_url,
               "--model", "scf", "--layers", "-1", "-q", "--no-cache", str(path),
               "-o", str(tmp_path / "out.h5ad")]  # fmt: skip
    # a process of its own: pytest would capture the warning in this one
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    err = done.stderr
    assert done.returncode == 0, err
    (line,) = [x for x in err.splitlines() if "warning" in x]
    assert line.startswith("scstrata embed: warning: scf: 2 of 100 genes")
