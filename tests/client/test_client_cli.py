"""`scstrata` command line: `embed` against the real service; `serve`/`fabricate` hand-over."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from scstrata_client.cli import main, parse_layers

from helpers import make_cells

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture
def h5ad_file(tmp_path, vocabulary):
    counts, genes = make_cells(vocabulary, n_cells=11, seed=41)
    adata = ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32))
    adata.var_names = genes
    adata.obs_names = [f"cell{i}" for i in range(11)]
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    return path, counts, genes


def _expected(tiny_backend, counts, genes, layers, pooling):
    return tiny_backend.embed(tiny_backend.tokenize(counts, genes, {}), layers, [pooling])[pooling]


def test_the_console_script_embeds_every_layer_into_the_output_file(
    service_url, tiny_backend, h5ad_file, tmp_path
):
    path, counts, genes = h5ad_file
    out = tmp_path / "out" / "embedded.h5ad"
    script = Path(sys.executable).with_name("scstrata")
    proc = subprocess.run(
        [str(script), "embed", "--url", service_url, "--model", "scf", "--layers", "all",
         "--chunk-size", "4", str(path), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "layers 0-3 of scf" in proc.stderr
    back = ad.read_h5ad(out)
    assert list(back.obs_names) == [f"cell{i}" for i in range(11)]
    expected = _expected(tiny_backend, counts, genes, [0, 1, 2, 3], "official")
    for k in range(4):
        np.testing.assert_allclose(back.obsm[f"X_scf_layer{k}"], expected[k], **TOL)
        assert back.uns["scstrata"][f"X_scf_layer{k}"]["url"] == service_url


def test_embed_options_pooling_layers_counts_layer_and_gene_column(
    service_url, tiny_backend, h5ad_file, tmp_path
):
    path, counts, genes = h5ad_file
    adata = ad.read_h5ad(path)
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(adata.shape, dtype=np.float32)  # e.g. normalised data elsewhere
    adata.var["symbol"] = genes
    adata.var_names = [f"ENSG{i:05d}" for i in range(adata.n_vars)]
    adata.write_h5ad(path)
    out = tmp_path / "out.h5ad"
    rc = main(
        ["embed", "--url", service_url, "--model", "scf", "--layers", "0,-1", "--pooling", "S",
         "--counts-layer", "counts", "--gene-column", "symbol", "--no-cache", "-q",
         str(path), "-o", str(out)]
    )  # fmt: skip
    assert rc == 0
    back = ad.read_h5ad(out)
    assert sorted(k for k in back.obsm) == ["X_scf_layer0_S", "X_scf_layer3_S"]
    expected = _expected(tiny_backend, counts, genes, [0, 3], "S")
    np.testing.assert_allclose(back.obsm["X_scf_layer3_S"], expected[3], **TOL)


def test_embed_reports_the_servers_message_and_fails(service_url, h5ad_file, tmp_path, capsys):
    path, _, _ = h5ad_file
    rc = main(
        [
            "embed",
            "--url",
            service_url,
            "--model",
            "nope",
            str(path),
            "-o",
            str(tmp_path / "o.h5ad"),
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "nope" in err and "HTTP 4" in err
    assert not (tmp_path / "o.h5ad").exists()


def test_embed_argument_mistakes_exit_2(tmp_path, capsys, h5ad_file):
    path, _, _ = h5ad_file
    assert main(["embed", "--model", "m", str(path), "-o", "x.h5ad"]) == 2
    assert "--url is required" in capsys.readouterr().err
    assert main(["embed", "--url", "http://x", "--model", "m", "missing.h5ad", "-o", "x"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert (
        main(["embed", "--url", "http://x", "--model", "m", "--counts-layer", "raw", str(path),
              "-o", "x"])
        == 2
    )  # fmt: skip
    assert "no layer 'raw'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["embed", "--url", "http://x", "--model", "m", "--layers", "last", str(path)])


@pytest.mark.parametrize(
    ("text", "value"), [("all", "all"), ("3", 3), ("-1", -1), ("0,6,-1", [0, 6, -1])]
)
def test_layers_argument(text, value):
    assert parse_layers(text) == value


def test_bad_layers_argument_is_rejected():
    with pytest.raises(argparse.ArgumentTypeError, match="0,6,-1"):
        parse_layers("first")


@pytest.mark.parametrize("command", ["serve", "fabricate"])
def test_service_commands_are_handed_to_the_service_cli(monkeypatch, command):
    import scstrata_service.cli

    seen = []
    monkeypatch.setattr(scstrata_service.cli, "main", lambda argv: seen.append(argv) or 0)
    assert main([command, "--model", "a=b:c", "--port", "1"]) == 0
    assert seen == [[command, "--model", "a=b:c", "--port", "1"]]


def test_service_commands_without_the_service_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "scstrata_service.cli", None)  # import fails
    assert main(["serve", "--model", "a=b:c"]) == 2
    assert "install scstrata-service to serve models" in capsys.readouterr().err


def test_a_zarr_output_streams_the_layers_and_refuses_another_run(
    service_url, tiny_backend, h5ad_file, tmp_path, capsys
):
    from scstrata_client.store import read_store

    path, counts, genes = h5ad_file
    out = tmp_path / "layers.zarr"
    argv = ["embed", "--url", service_url, "--model", "scf", "--layers", "0,-1", "--pooling",
            "S", "--chunk-size", "4", "--no-cache", str(path), "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().err
    store = read_store(out)
    assert store.complete and store.layers == [0, 3]
    expected = _expected(tiny_backend, counts, genes, [0, 3], "S")
    for k in (0, 3):
        np.testing.assert_allclose(store.to_numpy(k), expected[k], **TOL)
    assert main(argv) == 0  # a rerun finds every chunk written
    other = [a if a != "0,-1" else "all" for a in argv]
    assert main(other) == 1
    assert "refusing to mix results" in capsys.readouterr().err


def test_a_zarr_output_takes_the_counts_layer(
    service_url, tiny_backend, h5ad_file, tmp_path, capsys
):
    from scstrata_client.store import read_store

    path, counts, genes = h5ad_file
    adata = ad.read_h5ad(path)
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X * 3  # not the counts: a run reading X would not match
    adata.write_h5ad(path)
    out = tmp_path / "layers.zarr"
    argv = ["embed", "--url", service_url, "--model", "scf", "--layers", "-1", "--no-cache",
            "--counts-layer", "counts", str(path), "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().err
    expected = _expected(tiny_backend, counts, genes, [3], "official")
    np.testing.assert_allclose(read_store(out).to_numpy(3), expected[3], **TOL)

    wrong = [a if a != "counts" else "raw" for a in argv]
    assert main(wrong) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no layer 'raw' (has: counts)" in err
