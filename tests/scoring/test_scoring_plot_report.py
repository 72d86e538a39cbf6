import numpy as np
import pandas as pd
import pytest

from scstrata_scoring.plot import plot_scores
from scstrata_scoring.report import summary_line, write_report
from scstrata_scoring.summary import summarise
from scstrata_scoring.sweep import ROW_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    df = pd.DataFrame(rows, columns=ROW_COLUMNS)
    df["layer"] = df["layer"].astype("Int64")
    return df


@pytest.fixture
def perturbation_scores():
    df = pd.DataFrame(
        _rows("perturbation", "rsa_spearman", ("Rest", "Stim8hr")), columns=ROW_COLUMNS
    )
    df["layer"] = df["layer"].astype("Int64")
    return df


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
    # Best layer of model a is layer 1 (0.7), gain over final (0.5) is +0.2 = +40 %.
    assert "a: best layer 1 (depth 0.50)" in text
    assert "+40.0%" in text
    assert "<table" in text and "dpt_spearman" in text and "0.700 [0.650, 0.750]" in text
    assert "baseline:pca" in text and "paired bootstrap" in text and "excludes 0" in text


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
    assert "95% CI [+0.050, +0.310], significant" in text
    assert "b: best layer 2" in text and "the final layer is the best" in text


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
    assert summary_line(best).endswith("95% CI [-0.010, +0.400], not significant")


def test_report_escapes_html_in_notes(scores, tmp_path):
    text = write_report(scores, tmp_path, ["weights <random> & untrained"]).read_text()
    assert "weights &lt;random&gt; &amp; untrained" in text
