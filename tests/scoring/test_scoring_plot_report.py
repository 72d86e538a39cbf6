import pandas as pd
import pytest

from scstrata_scoring.plot import plot_scores
from scstrata_scoring.report import write_report
from scstrata_scoring.sweep import SCORE_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def scores():
    rows = []
    for model, values in {"a": [0.1, 0.7, 0.5], "b": [0.3, 0.4, 0.6]}.items():
        for k, v in enumerate(values):
            rows.append((model, k, k / 2, "dpt_spearman", v))
            rows.append((model, k, k / 2, "time_spearman", v - 0.1))
            rows.append((model, k, k / 2, "dpt_unreachable_fraction", 0.0))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def test_plot_scores_writes_a_png(scores, tmp_path):
    path = plot_scores(scores, tmp_path / "sub" / "trajectory.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


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
    assert "<table" in text and "dpt_spearman" in text and "0.700" in text


def test_report_escapes_html_in_notes(scores, tmp_path):
    text = write_report(scores, tmp_path, ["weights <random> & untrained"]).read_text()
    assert "weights &lt;random&gt; &amp; untrained" in text
