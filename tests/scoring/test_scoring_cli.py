import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scstrata_scoring.cli import main, parse_layers, read_genes
from scstrata_scoring.summary import SUMMARY_COLUMNS
from scstrata_scoring.sweep import SCORE_COLUMNS


def test_read_genes_from_scfoundation_tsv_and_plain_list(tmp_path, gene_tsv):
    genes = read_genes(gene_tsv)
    assert len(genes) == 19264 and genes[:2] == ["A1BG", "A1CF"]
    plain = tmp_path / "genes.txt"
    plain.write_text("TP53\nGAPDH\n\nACTB\n")
    assert read_genes(plain) == ["TP53", "GAPDH", "ACTB"]


def test_simulate_subcommand_writes_readable_h5ad(tmp_path, gene_tsv, capsys):
    out = tmp_path / "sim.h5ad"
    argv = ["simulate", "--genes", str(gene_tsv), "--out", str(out), "--n-cells", "120"]
    assert main([*argv, "--seed", "5"]) == 0
    adata = ad.read_h5ad(out)
    assert adata.shape == (120, 19264)
    assert adata.var_names[0] == "A1BG"
    assert {"time", "true_pseudotime", "branch"} <= set(adata.obs.columns)
    assert adata.uns["simulation"]["seed"] == 5
    assert "120 cells" in capsys.readouterr().out


def test_simulate_branching_and_perturbation_kinds(tmp_path, gene_tsv):
    branching = tmp_path / "branching.h5ad"
    argv = ["simulate", "--genes", str(gene_tsv), "--n-cells", "60", "--kind", "branching"]
    assert main([*argv, "--out", str(branching)]) == 0
    assert ad.read_h5ad(branching).uns["simulation"]["topology"] == "branching"
    screen = tmp_path / "screen.h5ad"
    argv = ["simulate", "--genes", str(gene_tsv), "--kind", "perturbation", "--out", str(screen)]
    options = ["--n-perturbations", "4", "--cells-per-perturbation", "5", "--n-control", "6"]
    assert main([*argv, *options, "--states", "Rest,Stim"]) == 0
    adata = ad.read_h5ad(screen)
    assert adata.n_obs == 2 * (6 + 4 * 5)
    assert list(adata.obs["state"].cat.categories) == ["Rest", "Stim"]
    assert set(adata.uns["simulation"]["effects"]) == {"Rest", "Stim"}


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
        "--n-boot",
        "20",
        "--note",
        "Random weights.",
        "--cache",
        str(tmp_path / "cache"),
    ]
    assert main(argv) == 0
    df = pd.read_csv(out / "scores.csv")
    assert list(df.columns) == SCORE_COLUMNS
    model = df[df["model"] == "scf"]
    assert sorted(model["layer"].unique()) == [0, 1, 2, 3]
    np.testing.assert_allclose(model["depth"], model["layer"] / 3)
    assert df["value"].notna().all()
    assert {"baseline:pca", "baseline:expression"} <= set(df["model"])
    assert df.loc[df["model"].str.startswith("baseline:"), "layer"].isna().all()
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS and len(summary) == 1
    assert (out / "trajectory.png").stat().st_size > 0
    report = (out / "report.html").read_text()
    assert "Random weights." in report and "demo (random) weights" in report
    assert "best layer" in capsys.readouterr().out
    cached = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(cached) == 4  # the client's chunk cache: one chunk x 4 layers

    # A rerun reads the embedding cache (the model card still comes from the service) and,
    # being seeded, reproduces the table exactly.
    rerun = tmp_path / "rerun"
    argv[argv.index(str(out))] = str(rerun)
    assert main(argv) == 0
    assert sorted((tmp_path / "cache").rglob("*.npy")) == cached  # nothing recomputed
    pd.testing.assert_frame_equal(pd.read_csv(rerun / "scores.csv"), df)


def test_perturbation_subcommand_against_the_real_service(tmp_path, gene_tsv, service_url):
    data = tmp_path / "screen.h5ad"
    sim = ["simulate", "--genes", str(gene_tsv), "--kind", "perturbation", "--out", str(data)]
    options = ["--n-perturbations", "5", "--cells-per-perturbation", "8", "--n-control", "10"]
    assert main([*sim, *options, "--states", "Rest,Stim8hr"]) == 0
    out = tmp_path / "run"
    argv = [
        "perturbation",
        "--url",
        service_url,
        "--model",
        "scf",
        "--data",
        str(data),
        "--out",
        str(out),
        "--n-boot",
        "20",
        "--n-permutations",
        "20",
    ]
    assert main(argv) == 0
    df = pd.read_csv(out / "scores.csv")
    assert list(df.columns) == SCORE_COLUMNS
    assert set(df["context"]) == {"Rest", "Stim8hr"}
    rsa = df[df["metric"] == "rsa_spearman"]
    assert len(rsa) == 2 * (4 + 2)  # 2 states x (4 layers + 2 baselines)
    assert rsa["null_z"].notna().all()
    assert (out / "perturbation.png").stat().st_size > 0
    text = (out / "report.html").read_text()
    assert "scf [Rest]" in text and "scf [Stim8hr]" in text


def test_sweep_reports_missing_columns_as_a_usage_error(tmp_path, gene_tsv, capsys):
    data = tmp_path / "sim.h5ad"
    main(["simulate", "--genes", str(gene_tsv), "--out", str(data), "--n-cells", "30"])
    argv = ["trajectory", "--url", "http://127.0.0.1:9", "--model", "m", "--data", str(data)]
    assert main([*argv, "--time-key", "day", "--out", str(tmp_path / "o")]) == 2
    assert "no obs column 'day'" in capsys.readouterr().err
