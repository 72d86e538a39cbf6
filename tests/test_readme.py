"""Every shell command in README.md, clients/README.md and scoring/README.md works as written.

Issue 17, point 7. Each ```bash block is split into commands and each command is run
literally, in order, in a scratch folder that looks like a clone after `make install`
(`.venv` is this interpreter's environment, `service/` the repository's). What is
not literal: the host of a URL (`gpu-host:3000`, `localhost:3000`) becomes the test server's,
the user's own input file of `scstrata embed` (`cells.h5ad`) is made first, a file of
embeddings the user already has (`traj_with_layers.h5ad`) is made too, and a scoring
sweep gets fewer bootstrap draws and label shuffles (``FEWER_DRAWS``) to bound its time.
Commands that need a real checkpoint under `/models` run too and must fail only on that
missing path, which proves every flag they use parses. A command no check knows fails the
test: add one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from helpers import make_cells

ROOT = Path(__file__).resolve().parents[1]
READMES = ["README.md", "clients/README.md", "scoring/README.md"]
URL = re.compile(r"http://(gpu-host|localhost|host):3000")
COMMAND_TIMEOUT_S = 900  # a sweep took 64-300 s on a 2-core machine shared by 8 sessions
FEWER_DRAWS = {"trajectory": " --n-boot 20", "perturbation": " --n-boot 20 --n-permutations 20"}


def shell_commands(text: str) -> list[str]:
    """The commands of every ```bash block: comments dropped, continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def yaml_block(text: str) -> str:
    (block,) = re.findall(r"```yaml\n(.*?)```", text, re.S)
    return block


ALL = [(name, cmd) for name in READMES for cmd in shell_commands((ROOT / name).read_text())]


@pytest.fixture(scope="module")
def clone(tmp_path_factory, vocabulary) -> Path:
    """A folder laid out as the READMEs assume, with the user's own files a command reads."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (folder / "service").symlink_to(ROOT / "service")
    (folder / "models.yaml").write_text(yaml_block((ROOT / "README.md").read_text()))
    import anndata as ad

    counts, genes = make_cells(vocabulary, n_cells=20, n_genes=300, seed=7)
    adata = ad.AnnData(counts.astype("float32"))
    adata.var_names = genes
    adata.write_h5ad(folder / "cells.h5ad")
    # embeddings a user already has, one obsm key per layer (scoring/README.md)
    from scstrata_scoring.simulate import simulate_trajectory

    traj = simulate_trajectory(list(vocabulary[:500]), n_cells=120, seed=3)
    rng = np.random.default_rng(3)
    for k in range(13):
        traj.obsm[f"X_layer{k}"] = rng.normal(size=(traj.n_obs, 8)).astype("float32")
    traj.write_h5ad(folder / "traj_with_layers.h5ad")
    return folder


def _run(command: str, folder: Path, service_url: str) -> subprocess.CompletedProcess:
    host = urlparse(service_url).netloc
    literal = URL.sub(f"http://{host}", command)
    words = literal.split()
    if len(words) > 1 and words[0].endswith("scstrata-score") and words[1] in FEWER_DRAWS:
        literal += FEWER_DRAWS[words[1]]
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", literal],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def _outputs(command: str) -> list[str]:
    """What a command says it writes: ``--out X`` and ``-o X``."""
    return re.findall(r"(?:--out|-o) (\S+)", command)


def test_the_readmes_have_commands():
    assert len(ALL) >= 10
    assert {name for name, _ in ALL} == set(READMES)


@pytest.mark.parametrize(("readme", "command"), ALL, ids=[f"{n}:{c[:60]}" for n, c in ALL])
def test_readme_command_works_as_written(readme, command, clone, service_url):
    if command.startswith("make "):
        # `make test` is CI itself (.ci/run); the demo runs in test_the_demo_runs. Here: the
        # targets exist and expand (a dry run, so nothing is installed twice).
        target = command.split()[1]
        done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return
    done = _run(command, clone, service_url)
    output = done.stdout + done.stderr
    if "/models/" in command or "--config models.yaml" in command:
        # a real checkpoint is the user's; everything before opening it must be right
        assert done.returncode == 2, output
        assert output.strip().endswith("/models/scfoundation does not exist"), output
        return
    assert done.returncode == 0, f"{command}\n{output[-3000:]}"
    for out in _outputs(command):
        assert (clone / out).exists(), f"{command} did not write {out}"
        if "trajectory" in command or "perturbation --url" in command:
            assert (clone / out / "report.html").is_file()


def test_make_clean_removes_the_project_outputs_and_the_cache_only(tmp_path):
    project = tmp_path / "project"
    home = tmp_path / "home"
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / "demo-output").mkdir()
    (project / "keep.txt").write_text("source")
    (home / ".cache" / "scstrata").mkdir(parents=True)
    (home / ".cache" / "scstrata" / "chunk.npy").write_bytes(b"x")
    (home / ".cache" / "other").mkdir()
    (project / "Makefile").write_text((ROOT / "Makefile").read_text())
    env = {**os.environ, "HOME": str(home)}
    done = subprocess.run(["make", "clean"], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (project / ".venv").exists() and not (project / "demo-output").exists()
    assert not (home / ".cache" / "scstrata").exists()
    assert (home / ".cache" / "other").is_dir() and (project / "keep.txt").is_file()
