import numpy as np
import pandas as pd
import pytest

from scstrata_scoring.plot import plot_scores
from scstrata_scoring.report import summary_line, write_report
from scstrata_scoring.summary import summarise
from scstrata_scoring.sweep import ROW_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_BASE_COLUMNS = [c for c in ROW_COLUMNS if c not in ("pooling", "recipe")]


def _frame(rows, recipe="scstrata"):
    """A score table (its row columns) from rows without the pooling and recipe columns."""
    df = pd.DataFrame(rows, columns=_BASE_COLUMNS)
    df["pooling"] = np.where(df["model"].str.startswith("baseline:"), "", "official")
    df["recipe"] = recipe
    df["layer"] = df["layer"].astype("Int64")
    return df[ROW_COLUMNS]


def _rows(task, metric, contexts=("all",)):
    rows = []
    for context in contexts:
        for model, values in {"a": [0.1, 0.7, 0.5], "b": [0.3, 0.4, 0.6]}.items():
            for k, v in enumerate(values):
                rows.append((model, k, k / 2, task, context, metric, v, v - 0.05, v + 0.05, 1.0))
                rows.append(
                    (model, k, k / 2, task, context, "effective_rank", 3 - k, *[np.nan] * 3)
                )
        for base, v in (("baseline:pca", 0.55), ("baseline:expression", 0.45)):
            rows.append((base, np.nan, np.nan, task, context, metric, v, v - 0.1, v + 0.1, np.nan))
    return rows


@pytest.fixture
def scores():
    rows = _rows("trajectory", "dpt_spearman")
    rows += [(*r[:5], "time_spearman", r[6] - 0.1, *r[7:]) for r in rows if r[5] == "dpt_spearman"]
    return _frame(rows)


@pytest.fixture
def perturbation_scores():
    return _frame(_rows("perturbation", "rsa_spearman", ("Rest", "Stim8hr")))


def test_plot_scores_writes_a_png(scores, tmp_path):
    path = plot_scores(scores, tmp_path / "sub" / "trajectory.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_plot_draws_contexts_and_baseline_bands(perturbation_scores, tmp_path):
    path = plot_scores(perturbation_scores, tmp_path / "perturbation.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_plot_scores_rejects_unknown_metric(scores, tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        plot_scores(scores, tmp_path / "x.png", metric="nonexistent")


def test_report_embeds_plot_table_summary_and_notes_verbatim(scores, tmp_path):
    note = "Demo weights are random: these scores say nothing about biology."
    path = write_report(scores, tmp_path, [note, "second line"])
    assert path == tmp_path / "report.html"
    text = path.read_text(encoding="utf-8")
    assert note in text and "second line" in text
    assert "data:image/png;base64," in text
    assert (tmp_path / "trajectory.png").stat().st_size > 0  # drawn because it was missing
    # Best layer of model a is layer 1 (0.7), gain over final (0.5) is +0.2 = +40 %; the
    # strongest baseline that is not the reference itself is expression (0.45).
    assert "a: best layer 1 (depth 0.50), pseudotime agreement (dpt_spearman) = 0.700" in text
    assert "+0.200" in text and "+40.0% of the final score" in text
    assert (
        "It is above every baseline. Best layer minus baseline:expression (0.450): +0.250" in text
    )
    assert "<table" in text and "0.700 [0.650, 0.750]" in text
    assert "baseline:pca" in text and "paired" in text and "excludes 0" in text


def test_report_states_gain_interval_and_significance_from_the_summary(scores, tmp_path):
    summary = summarise(scores)
    summary.loc[summary["model"] == "a", ["gain_ci_low", "gain_ci_high", "significant"]] = [
        0.05,
        0.31,
        True,
    ]
    summary.loc[summary["model"] == "b", ["gain_ci_low", "gain_ci_high", "significant"]] = [
        -0.1,
        0.2,
        False,
    ]
    text = write_report(scores, tmp_path, summary=summary).read_text()
    assert "+0.200, 95% CI [+0.050, +0.310], significant" in text
    assert "b: best layer 2" in text and "The final layer is the best." in text


def test_report_says_plainly_when_every_layer_is_below_the_baselines(tmp_path):
    rows = [
        ("m", k, k / 2, "trajectory", "all", "dpt_spearman", v, v - 0.05, v + 0.05, np.nan)
        for k, v in enumerate([0.169, 0.12, 0.05])
    ]
    rows += [
        (b, np.nan, np.nan, "trajectory", "all", "dpt_spearman", v, v - 0.01, v + 0.01, np.nan)
        for b, v in (("baseline:pca", 1.0), ("baseline:expression", 0.9))
    ]
    scores = _frame(rows)
    summary = summarise(scores)
    assert summary.loc[0, "below_baselines"] == "baseline:pca;baseline:expression"
    assert summary.loc[0, "baseline"] == "baseline:expression"  # not the reference itself
    text = write_report(scores, tmp_path, summary=summary).read_text()
    assert "Every layer scores below baseline:pca and baseline:expression." in text
    assert "Best layer minus baseline:expression (0.900): -0.731" in text
    summary.loc[0, ["vs_baseline_ci_low", "vs_baseline_ci_high"]] = [-0.9, 0.1]
    assert "-0.731, 95% CI [-0.900, +0.100] (the interval includes 0: no clear difference)." in (
        summary_line(summary.iloc[0].to_dict())
    )
    assert 'class="below"' in text
    # The final score (0.05) is positive but near 0: the gain is given, not a percentage.
    assert "+0.119" in text and "no percentage: the final score is below 0.1" in text
    assert "% of the final" not in summary_line(summary.iloc[0].to_dict())


def test_negative_final_score_gives_no_percent():
    rows = [
        ("m", k, k / 2, "perturbation", "Rest", "rsa_spearman", v, np.nan, np.nan, np.nan)
        for k, v in enumerate([0.3, 0.1, -0.2])
    ]
    summary = summarise(_frame(rows))
    row = summary.iloc[0].to_dict()
    assert row["gain"] == pytest.approx(0.5) and np.isnan(row["gain_pct"])
    line = summary_line(row)
    assert "+0.500" in line and "% of the final" not in line and "no percentage" in line


def test_report_shows_the_provenance_and_each_tasks_own_notes(perturbation_scores, tmp_path):
    provenance = {
        "data file": "/data/screen.h5ad",
        "data digest": "sha256:abc",
        "cells scored": 320,
        "models": {"m": {"checkpoint digest": "sha256:def", "pooling": "S"}},
        "recipe": "study",
        "packages": {"scanpy": "1.11.5"},
    }
    text = write_report(perturbation_scores, tmp_path, provenance=provenance).read_text()
    assert "<h2>Provenance</h2>" in text
    for value in ("/data/screen.h5ad", "sha256:abc", "320", "sha256:def", "study", "1.11.5"):
        assert value in text
    assert "dpt_spearman" not in text and "pseudotime" not in text  # no trajectory notes
    assert "perturbation similarity agreement (rsa_spearman)" in text  # one sentence each
    assert "-1 to 1" in text


def test_report_for_perturbation_names_each_context(perturbation_scores, tmp_path):
    text = write_report(perturbation_scores, tmp_path).read_text()
    assert (tmp_path / "perturbation.png").exists()
    assert "a [Rest]: best layer 1" in text and "a [Stim8hr]: best layer 1" in text
    assert "resampled perturbations" in text


def test_summary_line_with_and_without_interval():
    best = {
        "model": "m",
        "context": "Stim8hr",
        "metric": "rsa_spearman",
        "best_layer": 3,
        "best_depth": 0.25,
        "best_score": 0.8,
        "final_layer": 12,
        "final_score": 0.6,
        "gain": 0.2,
        "gain_pct": 33.3,
    }
    assert summary_line(best).startswith("m [Stim8hr]: best layer 3 (depth 0.25)")
    assert "CI" not in summary_line(best)
    best.update(gain_ci_low=-0.01, gain_ci_high=0.4, significant=False)
    assert "95% CI [-0.010, +0.400], not significant (+33.3% of the final score)" in (
        summary_line(best)
    )


def test_report_escapes_html_in_notes(scores, tmp_path):
    text = write_report(scores, tmp_path, ["weights <random> & untrained"]).read_text()
    assert "weights &lt;random&gt; &amp; untrained" in text
