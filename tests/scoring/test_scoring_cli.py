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
    cached = sorted((tmp_path / "cache").rglob("*.npz"))
    assert len(cached) == 1  # the client's chunk cache: one chunk, its 4 layers in one file

    # A rerun reads the embedding cache (the model card still comes from the service) and,
    # being seeded, reproduces the table exactly.
    rerun = tmp_path / "rerun"
    argv[argv.index(str(out))] = str(rerun)
    assert main(argv) == 0
    assert sorted((tmp_path / "cache").rglob("*.npz")) == cached  # nothing recomputed
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


def _service_run(tmp_path, service_url, data, out, *extra):
    argv = ["trajectory", "--url", service_url, "--model", "scf", "--data", str(data)]
    argv += ["--out", str(out), "--n-boot", "20", "--cache", str(tmp_path / "cache"), *extra]
    assert main(argv) == 0
    return pd.read_csv(out / "scores.csv")


def test_obsm_scoring_equals_scoring_the_arrays_pulled_through_the_client(
    tmp_path, gene_tsv, service_url, capsys
):
    from scstrata_client import Client

    data = tmp_path / "sim.h5ad"
    main(["simulate", "--genes", str(gene_tsv), "--out", str(data), "--n-cells", "150"])
    pulled = _service_run(tmp_path, service_url, data, tmp_path / "service")

    adata = ad.read_h5ad(data)
    with Client(service_url, cache=False) as client:
        client.embed(adata, model="scf", layers="all", write_to=adata)
    with_layers = tmp_path / "with_layers.h5ad"
    adata.write_h5ad(with_layers)
    out = tmp_path / "obsm"
    argv = ["trajectory", "--data", str(with_layers), "--obsm", "X_scf_layer*", "--model", "scf"]
    argv += ["--pooling", "official", "--out", str(out), "--n-boot", "20"]
    assert main(argv) == 0
    from_obsm = pd.read_csv(out / "scores.csv")
    assert sorted(from_obsm["layer"].dropna().unique()) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(from_obsm, pulled)  # same arrays, same scores, no service
    report = (out / "report.html").read_text()
    assert "adata.obsm of the data file: X_scf_layer0, X_scf_layer1" in report

    # The same layers streamed into the client's zarr store score the same too.
    with Client(service_url, cache=False) as client:
        client.embed(ad.read_h5ad(data), model="scf", layers="all", out=tmp_path / "l.zarr")
    out = tmp_path / "store"
    argv = ["trajectory", "--data", str(data), "--store", str(tmp_path / "l.zarr")]
    assert main([*argv, "--out", str(out), "--n-boot", "20"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "scores.csv"), pulled)
    other = tmp_path / "other.h5ad"
    main(["simulate", "--genes", str(gene_tsv), "--out", str(other), "--n-cells", "140"])
    argv[2] = str(other)
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2  # a store of other cells
    assert "holds embeddings of other cells than --data" in capsys.readouterr().err


def test_both_recipes_run_from_the_cli_on_the_simulated_screen(tmp_path, gene_tsv):
    from scstrata_scoring.simulate_perturbation import true_effect_embedding

    data = tmp_path / "screen.h5ad"
    sim = ["simulate", "--genes", str(gene_tsv), "--kind", "perturbation", "--out", str(data)]
    options = ["--n-perturbations", "5", "--cells-per-perturbation", "8", "--n-control", "10"]
    assert main([*sim, *options, "--states", "Rest,Stim8hr"]) == 0
    adata = ad.read_h5ad(data)
    truth = true_effect_embedding(adata)
    noise = np.random.default_rng(0).normal(size=truth.shape)
    adata.obsm["X_layer_0"], adata.obsm["X_layer_1"] = noise, truth + 0.1 * noise
    adata.write_h5ad(data)
    tables = {}
    for recipe in ("scstrata", "study"):
        out = tmp_path / recipe
        argv = ["perturbation", "--data", str(data), "--obsm", "X_layer_*", "--recipe", recipe]
        argv += ["--layer-numbering", "study", "--out", str(out), "--n-boot", "20"]
        assert main([*argv, "--n-permutations", "10"]) == 0
        tables[recipe] = pd.read_csv(out / "scores.csv")
        assert set(tables[recipe]["recipe"]) == {recipe}
        layers = tables[recipe].dropna(subset=["layer"]).drop_duplicates("layer")
        assert dict(zip(layers["layer"], layers["depth"])) == {0: 0.5, 1: 1.0}  # block i+1
        text = (out / "report.html").read_text()
        assert "dpt_spearman" not in text and "pseudotime" not in text
    rsa = {
        r: t.query("metric == 'rsa_spearman' and layer == 1")["value"] for r, t in tables.items()
    }
    assert not np.allclose(rsa["scstrata"], rsa["study"])  # different references


def test_study_recipe_trajectory_from_the_cli_says_it_pads_the_overlap(tmp_path, gene_tsv):
    data = tmp_path / "sim.h5ad"
    main(["simulate", "--genes", str(gene_tsv), "--out", str(data), "--n-cells", "120"])
    adata = ad.read_h5ad(data)
    pt = adata.obs["true_pseudotime"].to_numpy()
    rng = np.random.default_rng(0)
    for k in range(3):
        adata.obsm[f"X_layer_{k}"] = np.column_stack([pt * k, rng.normal(size=(pt.size, 4))])
    adata.write_h5ad(data)
    out = tmp_path / "study"
    argv = ["trajectory", "--data", str(data), "--obsm", "X_layer_*", "--recipe", "study"]
    assert main([*argv, "--out", str(out), "--n-boot", "20"]) == 0
    df = pd.read_csv(out / "scores.csv")
    assert set(df["recipe"]) == {"study"}
    text = (out / "report.html").read_text()
    assert "padded with cell 0 to 30 slots" in text and "left out of the correlation" in text
    pca = df.query("model == 'baseline:pca' and metric == 'neighbourhood_overlap'")
    # The reference against itself: 1, less 1/30 for each cell with cell 0 among its
    # neighbours (the padding then adds nothing), as in the study.
    assert 0.95 < pca["value"].iloc[0] < 1.0


def test_report_provenance_holds_data_model_and_run_fields(tmp_path, gene_tsv, service_url):
    from scstrata_scoring.provenance import file_digest
    from scstrata_scoring.pull import model_card

    data = tmp_path / "sim.h5ad"
    main(["simulate", "--genes", str(gene_tsv), "--out", str(data), "--n-cells", "90"])
    out = tmp_path / "run"
    _service_run(tmp_path, service_url, data, out, "--layers", "1,3", "--seed", "7")
    text = (out / "report.html").read_text()
    provenance = text[text.index("<h2>Provenance</h2>") :]
    digest = model_card(service_url, "scf").checkpoint_digest
    for field in (
        str(data.resolve()),
        file_digest(data),
        "<th>cells scored</th><td>90</td>",
        "<th>genes</th><td>19264</td>",
        f"checkpoint digest {digest}",
        "pooling official",
        "layers 1, 3",
        "<th>recipe</th><td>scstrata</td>",
        "scanpy 1.",
        "scstrata-scoring ",
        "--seed 7",
    ):
        assert field in provenance, field


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "missing.h5ad"], "--data: missing.h5ad: no such file"),
        (["--time-key", "day"], "no obs column 'day'"),
        (["--obsm", "X_nothing*"], "--obsm: no obsm key matches 'X_nothing*'"),
        (["--obsm", "X_layer*", "--gene-column", "symbol"], "--gene-column: adata.var has no"),
        (["--counts-layer", "raw"], "no layer 'raw'"),
        ([], "--url and --model are required unless --obsm or --store"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(tmp_path, gene_tsv, capsys, extra, message):
    data = tmp_path / "sim.h5ad"
    main(["simulate", "--genes", str(gene_tsv), "--out", str(data), "--n-cells", "30"])
    adata = ad.read_h5ad(data)
    adata.obsm["X_layer_1"] = np.zeros((30, 2))
    adata.write_h5ad(data)
    capsys.readouterr()
    argv = ["trajectory", "--data", str(data), "--out", str(tmp_path / "o"), *extra]
    if "--data" in extra:
        argv = ["trajectory", *extra, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("scstrata-score trajectory: error: ")


def test_cli_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        main(["trajectory", "--data", str(tmp_path / "x.h5ad"), "--out", "o", "--debug"])


def test_study_recipe_against_the_real_service(tmp_path, gene_tsv, service_url, capsys):
    from scstrata_scoring.pull import card_get, model_card

    data = tmp_path / "sim.h5ad"
    main(["simulate", "--genes", str(gene_tsv), "--out", str(data), "--n-cells", "90"])
    out = tmp_path / "study"
    argv = ["trajectory", "--url", service_url, "--model", "scf", "--data", str(data)]
    argv += ["--recipe", "study", "--out", str(out), "--n-boot", "10", "--no-baselines"]
    code = main([*argv, "--cache", str(tmp_path / "cache")])
    card = model_card(service_url, "scf")
    if card_get(card, "final_norm") is None:
        # A service whose cards cannot say whether layer L is normed: a plain refusal.
        assert code == 2
        assert "no 'final_norm' field" in capsys.readouterr().err
        return
    assert code == 0
    df = pd.read_csv(out / "scores.csv")
    assert set(df["pooling"]) == {"S"} and set(df["recipe"]) == {"study"}
    n_layers = card_get(card, "n_layers")
    assert sorted(df["layer"].unique()) == list(range(n_layers))  # X_layer_i = block i + 1
    np.testing.assert_allclose(df["depth"], (df["layer"] + 1) / n_layers)
    assert "final_norm" in (out / "report.html").read_text()
