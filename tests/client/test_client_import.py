import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_importing_the_client_does_not_import_torch():
    proc = _run("import scstrata_client, sys; assert 'torch' not in sys.modules")
    assert proc.returncode == 0, proc.stderr


def test_preparing_a_request_from_anndata_does_not_import_torch():
    code = (
        "import sys, numpy as np, anndata as ad\n"
        "from scstrata_client import Client\n"
        "from scstrata_client._core import EmbedJob\n"
        "a = ad.AnnData(X=np.ones((3, 2), dtype=np.float32))\n"
        "job = EmbedJob.plan(a, None, model='m', layers='all', pooling='official',\n"
        "                    options=None, chunk_size=2)\n"
        "job.body(0)\n"
        "Client('http://127.0.0.1:9').close()\n"
        "import asyncio\n"
        "from scstrata_client import AsyncClient\n"
        "asyncio.run(AsyncClient('http://127.0.0.1:9').aclose())\n"
        "import scstrata_client.cli\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr


def test_public_names_are_exported():
    import scstrata_client

    for name in scstrata_client.__all__:
        assert hasattr(scstrata_client, name), name
