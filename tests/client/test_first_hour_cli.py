"""`scstrata embed` mistakes end in one line naming the fix; `--debug` shows the traceback.

Issue 17, point 6: a CSV given to `scstrata embed` printed a 23-line h5py traceback.
"""

from __future__ import annotations

import subprocess
import sys

import anndata.io
import pytest

from scstrata_client.cli import main


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "cells.csv"
    path.write_text("cell,TP53,GAPDH\nc1,1,2\nc2,0,3\n")
    return path


def test_a_csv_is_one_line_with_the_command_that_converts_it(csv_file, tmp_path, capsys):
    code = main(["embed", "--url", "http://127.0.0.1:9", "--model", "scf", str(csv_file),
                 "-o", str(tmp_path / "out.h5ad")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith(f"scstrata embed: {csv_file}: not an h5ad file")
    # the fix it names works as written
    command = err.split("convert it first: ")[1].split(" (cells as rows")[0]
    assert command.startswith("python -c ")
    code = command.removeprefix("python -c ").strip('"')
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    converted = anndata.io.read_h5ad(csv_file.with_suffix(".h5ad"))
    assert converted.shape == (2, 2) and list(converted.var_names) == ["TP53", "GAPDH"]


def test_debug_shows_the_traceback(csv_file, tmp_path):
    args = ["embed", "--debug", "--url", "http://127.0.0.1:9", "--model", "scf", str(csv_file)]
    with pytest.raises(ValueError, match="not an h5ad file") as raised:
        main([*args, "-o", str(tmp_path / "out.h5ad")])
    assert isinstance(raised.value.__cause__, OSError)  # h5py's own error, kept for debugging
