import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from scstrata_scoring.data import read_perturbation, read_trajectory


def _write(tmp_path, obs, x=None, layers=None):
    n = len(next(iter(obs.values())))
    x = sparse.csr_matrix(np.arange(n * 3, dtype=np.float32).reshape(n, 3)) if x is None else x
    adata = ad.AnnData(X=x, obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(n)]))
    adata.var_names = ["A", "B", "C"]
    for name, value in (layers or {}).items():
        adata.layers[name] = value
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    return path


def test_read_trajectory_drops_unlabelled_cells_and_checks_the_column(tmp_path):
    day = pd.Categorical(["d0", "d2", None, "d7"], categories=["d0", "d2", "d7"], ordered=True)
    path = _write(tmp_path, {"day": day})
    adata = read_trajectory(path, time_key="day")
    assert adata.n_obs == 3 and list(adata.obs_names) == ["c0", "c1", "c3"]
    with pytest.raises(ValueError, match="no obs column 'time'"):
        read_trajectory(path)


def test_read_trajectory_takes_counts_from_a_layer_and_rejects_negative_values(tmp_path):
    counts = sparse.csr_matrix(np.ones((3, 3), dtype=np.float32))
    path = _write(
        tmp_path, {"t": [0, 1, 2]}, x=-np.ones((3, 3), dtype=np.float32), layers={"counts": counts}
    )
    with pytest.raises(ValueError, match="non-negative"):
        read_trajectory(path, "t")
    adata = read_trajectory(path, "t", counts_layer="counts")
    assert adata.X.sum() == 9


def test_read_perturbation_checks_labels_and_control(tmp_path):
    obs = {
        "gene": ["NTC", "NTC", "TP53", None, "NTC"],
        "condition": ["Rest", "Rest", "Rest", "Rest", "Stim8hr"],
    }
    path = _write(tmp_path, obs)
    adata = read_perturbation(path, "gene", "condition", control="NTC")
    assert adata.n_obs == 4
    with pytest.raises(ValueError, match="no control cells labelled 'non-targeting'"):
        read_perturbation(path, "gene", "condition")
    with pytest.raises(ValueError, match="no obs column 'state'"):
        read_perturbation(path, "gene", control="NTC")
    assert read_perturbation(path, "gene", None, control="NTC").n_obs == 4
