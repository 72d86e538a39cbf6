"""`scstrata` command line.

``scstrata embed`` pulls per-layer embeddings from a service into an h5ad file (this package).
``scstrata serve`` and ``scstrata fabricate`` belong to the service package and are handed
over to it untouched when it is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._base import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CONCURRENCY
from ._protocol import normalise_layers
from .exceptions import ScstrataError

SERVICE_COMMANDS = {
    "serve": "serve models over HTTP (needs scstrata-service)",
    "fabricate": "write a demo checkpoint with random weights (needs scstrata-service)",
}
URL_ENV = "SCSTRATA_URL"


def parse_layers(text: str) -> Any:
    """``all``, one index, or a comma-separated list (``0,6,-1``)."""
    text = text.strip()
    if text == "all":
        return "all"
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'all' or comma-separated layer indices such as 0,6,-1; got {text!r}"
        ) from None
    return normalise_layers(values[0] if len(values) == 1 else values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scstrata", description="Per-layer cell embeddings from single-cell models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    embed = sub.add_parser(
        "embed",
        help="embed the cells of an h5ad file with a remote service",
        description="Embed the cells of FILE (.h5ad, or an AnnData .zarr) and write every layer "
        "to obsm of OUT.h5ad (X_<model>_layer<k>, with provenance in uns['scstrata']), or, "
        "with OUT.zarr, stream each chunk into a zarr store as it arrives (the input read a "
        "chunk at a time; rerun the same command to resume).",
    )
    embed.add_argument("file", metavar="FILE", help="cells x genes counts in X (.h5ad or .zarr)")
    embed.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="OUT",
        help="OUT.h5ad: the input with embeddings in obsm; OUT.zarr: a store of the layers",
    )
    embed.add_argument(
        "--url",
        action="append",
        help=f"the service's base URL (default ${URL_ENV}); repeat it, or separate URLs with "
        "commas, to spread chunks over several replicas",
    )
    embed.add_argument("--model", required=True, help="a served model's name")
    embed.add_argument(
        "--layers",
        type=parse_layers,
        default="all",
        help="'all' (default), an index, or a list such as 0,6,-1 (-1 = last)",
    )
    embed.add_argument("--pooling", default="official", help="default: official")
    embed.add_argument(
        "--extra-pooling",
        action="append",
        metavar="POOLING",
        help="another pooling at the same layers, from the same forward pass (repeat it for more)",
    )
    embed.add_argument(
        "--min-known-genes",
        type=int,
        metavar="N",
        help="the fewest of the model's genes FILE must carry (the server's default: 5,000, "
        "so a gene subset such as HVGs is refused); lower it for a targeted panel",
    )
    embed.add_argument(
        "--min-mapped-fraction",
        type=float,
        metavar="F",
        help="the least share of the counts on genes the model knows (the server's default 0.5)",
    )
    embed.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"cells per request (default {DEFAULT_CHUNK_SIZE})",
    )
    embed.add_argument(
        "--max-concurrency",
        type=int,
        default=DEFAULT_MAX_CONCURRENCY,
        help=f"requests in flight (default {DEFAULT_MAX_CONCURRENCY})",
    )
    embed.add_argument("--token", help="bearer token (default $SCSTRATA_TOKEN)")
    embed.add_argument(
        "--counts-layer", metavar="NAME", help="take counts from adata.layers[NAME], not X"
    )
    embed.add_argument(
        "--gene-column", metavar="COLUMN", help="take gene names from adata.var[COLUMN]"
    )
    embed.add_argument("--cache-dir", help="result cache folder (default ~/.cache/scstrata)")
    embed.add_argument("--no-cache", action="store_true", help="do not use the result cache")
    embed.add_argument(
        "--transport-format",
        choices=["auto", "json", "npz"],
        default="auto",
        help=argparse.SUPPRESS,
    )
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    embed.add_argument("--debug", action="store_true", help="show the traceback of an error")
    dask = embed.add_argument_group(
        "on a Dask cluster (pip install 'scstrata-client[dask]'; -o is then a .zarr store)"
    )
    dask.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a Dask scheduler (tcp://host:8786): its workers embed row chunks and write them "
        "to the store; FILE must be readable at the same path on every worker. 'local:N' "
        "starts N worker processes on this machine for the sweep",
    )
    dask.add_argument(
        "--in-process",
        metavar="FAMILY:PATH",
        help="with --scheduler: each worker loads this checkpoint once on its own device "
        "(needs scstrata-service there) instead of calling --url",
    )
    dask.add_argument(
        "--chunks-per-task",
        type=int,
        help="with --scheduler: consecutive chunks per Dask task (default 8)",
    )

    for name, text in SERVICE_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _embed(args: argparse.Namespace) -> int:
    from ._client import Client

    urls = ",".join(args.url) if args.url else os.environ.get(URL_ENV)
    args.url = urls  # one string, URLs separated by commas
    if args.scheduler or args.in_process:
        if args.extra_pooling:
            print("scstrata embed: --extra-pooling: not with --scheduler yet", file=sys.stderr)
            return 2
        return _embed_on_dask(args, urls)
    if not urls:
        print(f"scstrata embed: --url is required (or set {URL_ENV})", file=sys.stderr)
        return 2
    path = Path(args.file)
    if not path.exists():
        print(f"scstrata embed: {path}: no such file", file=sys.stderr)
        return 2
    settings = dict(
        token=args.token,
        chunk_size=args.chunk_size,
        max_concurrency=args.max_concurrency,
        progress=not args.quiet,
        cache=not args.no_cache,
        cache_dir=args.cache_dir,
        transport_format=args.transport_format,
    )
    wanted = dict(
        model=args.model,
        layers=args.layers,
        pooling=args.pooling,
        extra_outputs=args.extra_pooling,
        min_known_genes=args.min_known_genes,
        min_mapped_fraction=args.min_mapped_fraction,
    )
    if Path(args.out).suffix == ".zarr":
        return _stream(args, urls, path, settings, wanted)
    adata = _read_h5ad(path)
    X = adata.X
    if args.counts_layer is not None:
        if args.counts_layer not in adata.layers:
            known = ", ".join(adata.layers.keys()) or "none"
            print(
                f"scstrata embed: --counts-layer: no layer {args.counts_layer!r} (has: {known})",
                file=sys.stderr,
            )
            return 2
        X = adata.layers[args.counts_layer]
    genes = adata.var_names
    if args.gene_column is not None:
        if args.gene_column not in adata.var.columns:
            print(
                f"scstrata embed: --gene-column: adata.var has no column {args.gene_column!r}",
                file=sys.stderr,
            )
            return 2
        genes = adata.var[args.gene_column].astype(str)
    with Client(urls, **settings) as client:
        result = client.embed(X, list(genes), write_to=adata, **wanted)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    if not args.quiet:
        by_pooling = result if args.extra_pooling else {args.pooling: result}
        for pooling, layers in by_pooling.items():
            dims = {int(a.shape[1]) for a in layers.values()}
            print(
                f"wrote {out}: {adata.n_obs} cells, layers {_ranges(sorted(layers))} of "
                f"{args.model}, pooling {pooling} (dim {', '.join(map(str, sorted(dims)))}) "
                "in obsm",
                file=sys.stderr,
            )
        _print_replicas(client)
    return 0


def _stream(
    args: argparse.Namespace,
    urls: str,
    path: Path,
    settings: dict[str, Any],
    wanted: dict[str, Any],
) -> int:
    """``-o OUT.zarr``: the input read a chunk at a time, each chunk written as it arrives."""
    from ._client import Client

    with Client(urls, **settings) as client:
        result = client.embed(
            path,
            out=args.out,
            counts_layer=args.counts_layer,
            gene_column=args.gene_column,
            **wanted,
        )
    if not args.quiet:
        stores = result.values() if args.extra_pooling else [result]
        for store in stores:
            print(
                f"wrote {args.out}: {store.n_cells} cells, layers {_ranges(store.layers)} of "
                f"{args.model} (dim {store.spec.dim}) under {store.spec.group_path()}/",
                file=sys.stderr,
            )
        _print_replicas(client)
    return 0


def _print_replicas(client: Any) -> None:
    if client.last_run is not None and len(client.urls) > 1:
        print(client.last_run.summary(), file=sys.stderr)


def _read_h5ad(path: Path) -> Any:
    import anndata as ad

    if path.suffix == ".zarr" or path.is_dir():
        return ad.read_zarr(path)
    try:
        return ad.read_h5ad(path)
    except OSError as err:  # h5py: not an HDF5 file at all (a CSV, a .loom, a truncated file)
        convert = (
            f"python -c \"import anndata.io; anndata.io.read_csv('{path}').write_h5ad('"
            f"{path.with_suffix('.h5ad')}')\" (cells as rows, genes as columns)"
        )
        hint = f"; convert it first: {convert}" if path.suffix.lower() in (".csv", ".tsv") else ""
        raise ValueError(f"{path}: not an h5ad file ({err}){hint}") from err


def _embed_on_dask(args: argparse.Namespace, joined: str | None) -> int:
    """``joined``: the replicas' URLs, one string separated by commas (as ``_embed`` made it)."""
    if not args.scheduler:
        print("scstrata embed: --in-process needs --scheduler", file=sys.stderr)
        return 2
    try:
        from .distributed import embed_on_dask
    except ImportError:
        print(
            "scstrata embed: --scheduler needs Dask: pip install 'scstrata-client[dask]'",
            file=sys.stderr,
        )
        return 2
    if args.in_process is None and not joined:
        print(f"scstrata embed: --url is required (or set {URL_ENV})", file=sys.stderr)
        return 2
    urls = None
    if args.in_process is None:
        urls = [url.strip() for url in joined.split(",") if url.strip()]
    store = embed_on_dask(
        args.scheduler,
        Path(args.file),
        model=args.model,
        out=args.out,
        urls=urls,
        in_process=args.in_process,
        layers=args.layers,
        pooling=args.pooling,
        token=args.token,
        chunk_size=args.chunk_size,
        **({"chunks_per_task": args.chunks_per_task} if args.chunks_per_task else {}),
        max_concurrency=args.max_concurrency,
        counts_layer=args.counts_layer,
        gene_column=args.gene_column,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(
            f"wrote {args.out}: {store.n_cells} cells, layers {_ranges(store.layers)} of "
            f"{args.model} (pooling {args.pooling}) on Dask",
            file=sys.stderr,
        )
    return 0


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def _delegate(argv: Sequence[str]) -> int:
    try:
        from scstrata_service.cli import main as service_main
    except ImportError:
        print("install scstrata-service to serve models", file=sys.stderr)
        return 2
    return int(service_main(list(argv)) or 0)


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """A warning (e.g. genes the model does not know) is one line on stderr, not a source
    dump; restored afterwards (tests call main() in their own process)."""
    saved = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"scstrata embed: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = saved


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SERVICE_COMMANDS:
        return _delegate(argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="scstrata: %(message)s")
    try:
        with _one_line_warnings():
            return _embed(args)
    except KeyboardInterrupt:
        print(
            "scstrata embed: interrupted; chunks already embedded are cached (or, with "
            "-o OUT.zarr, in the store), run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    except (ScstrataError, ValueError, TypeError) as err:
        if args.debug:
            raise
        print(f"scstrata embed: {err}", file=sys.stderr)
        return 1 if isinstance(err, ScstrataError) else 2


if __name__ == "__main__":
    raise SystemExit(main())
