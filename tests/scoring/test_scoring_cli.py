import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scstrata_scoring.cli import main, parse_layers, read_genes


def test_read_genes_from_scfoundation_tsv_and_plain_list(tmp_path, gene_tsv):
    genes = read_genes(gene_tsv)
    assert len(genes) == 19264 and genes[:2] == ["A1BG", "A1CF"]
    plain = tmp_path / "genes.txt"
    plain.write_text("TP53\nGAPDH\n\nACTB\n")
    assert read_genes(plain) == ["TP53", "GAPDH", "ACTB"]


def test_simulate_subcommand_writes_readable_h5ad(tmp_path, gene_tsv, capsys):
    out = tmp_path / "sim.h5ad"
    assert (
        main(
            [
                "simulate",
                "--genes",
                str(gene_tsv),
                "--out",
                str(out),
                "--n-cells",
                "120",
                "--seed",
                "5",
            ]
        )
        == 0
    )
    adata = ad.read_h5ad(out)
    assert adata.shape == (120, 19264)
    assert adata.var_names[0] == "A1BG"
    assert {"time", "true_pseudotime"} <= set(adata.obs.columns)
    assert adata.uns["simulation"]["seed"] == 5
    assert "120 cells" in capsys.readouterr().out


def test_parse_layers_accepts_all_int_and_comma_list():
    assert parse_layers("all") == "all"
    assert parse_layers("-1") == -1
    assert parse_layers("0, 6,12") == [0, 6, 12]
    with pytest.raises(Exception, match="--layers"):
        parse_layers("last")


def test_trajectory_subcommand_against_the_real_service(tmp_path, gene_tsv, capsys, service_url):
    data = tmp_path / "sim.h5ad"
    main(["simulate", "--genes", str(gene_tsv), "--out", str(data), "--n-cells", "150"])
    out = tmp_path / "run"
    argv = [
        "trajectory",
        "--url",
        service_url,
        "--model",
        "scf",
        "--data",
        str(data),
        "--time-key",
        "time",
        "--layers",
        "all",
        "--out",
        str(out),
        "--note",
        "Random weights.",
    ]
    assert main(argv) == 0
    df = pd.read_csv(out / "scores.csv")
    assert list(df.columns) == ["model", "layer", "depth", "metric", "value"]
    assert sorted(df["layer"].unique()) == [0, 1, 2, 3]
    np.testing.assert_allclose(df["depth"], df["layer"] / 3)
    assert df["value"].notna().all()
    assert (out / "trajectory.png").stat().st_size > 0
    report = (out / "report.html").read_text()
    assert "Random weights." in report and "demo (random) weights" in report
    assert "best layer" in capsys.readouterr().out
