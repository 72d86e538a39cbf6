"""`scstrata` command line: serve models, fabricate a demo checkpoint."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path

from scstrata_service.families import FAMILIES
from scstrata_service.registry import MODELS_ENV, ModelSpec, load_config, specs_to_env
from scstrata_service.startup import DEBUG_ENV
from scstrata_service.workers import WORKERS_ENV, parse_workers


def _serve(args: argparse.Namespace) -> int:
    try:
        specs = load_config(Path(args.config)) if args.config else []
        specs += [ModelSpec.parse(text) for text in args.model or []]
        if not specs:
            raise ValueError("name at least one model: --model NAME=FAMILY:PATH or --config")
        if not args.debug:
            _check_port(args.host, args.port)
    except ValueError as err:
        if args.debug:
            raise
        print(f"scstrata serve: {err}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env[MODELS_ENV] = specs_to_env(specs)
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    for flag, var in (
        ("max_tokens", "SCSTRATA_MAX_TOKENS"),
        ("device", "SCSTRATA_DEVICE"),
        ("max_cells", "SCSTRATA_MAX_CELLS"),
        ("attention", "SCSTRATA_ATTENTION"),
        ("compile", "SCSTRATA_COMPILE"),
        ("token_file", "SCSTRATA_TOKEN_FILE"),
        ("workers", "SCSTRATA_WORKERS"),
    ):
        value = getattr(args, flag)
        if value is not None:
            env[var] = str(value)
    if args.debug:
        env[DEBUG_ENV] = "1"  # a model that fails to load logs its traceback
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "scstrata_service.service:Embedder",
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    # exec: this process becomes the server, so it returns only when the server stops and
    # signals (Ctrl-C, SIGTERM) reach BentoML directly.
    os.execvpe(command[0], command, env)
    return 0  # not reached


def _check_port(host: str, port: int) -> None:
    """Fail in one line when the address is taken (BentoML's own error is a long traceback)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as the server binds: a port left in TIME_WAIT by a stopped server is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ValueError(
                    f"--port {port}: {host}:{port} is already in use (another scstrata serve?); "
                    f"stop that process or pick another port, e.g. --port {port + 1}"
                ) from None
            raise ValueError(f"--host {host} --port {port}: cannot listen there ({err})") from None


def _workers(text: str) -> str:
    try:
        parse_workers(text, gpus=0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).replace(WORKERS_ENV, "--workers")) from None
    return text


def _fabricate(args: argparse.Namespace) -> int:
    from scstrata_service.families import fabricate

    folder = fabricate(
        args.family,
        Path(args.out),
        hidden=args.hidden,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        seed=args.seed,
    )
    print(f"wrote a {args.family} checkpoint to {folder} (RANDOM DEMO WEIGHTS, official layout)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scstrata", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve models over HTTP (returns when the server stops)")
    serve.add_argument("--config", help="YAML model registry (README); adds to any --model")
    serve.add_argument(
        "--model",
        action="append",
        metavar="NAME=FAMILY:PATH",
        help="a model to serve; PATH is the checkpoint file or its folder (repeatable)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--device", help="torch device (default: CUDA when available, else CPU)")
    serve.add_argument(
        "--max-tokens", type=int, help="tokens per forward pass (default: by device)"
    )
    serve.add_argument("--max-cells", type=int, help="cells per request (default 20000)")
    serve.add_argument(
        "--attention",
        # literal, not packing.ATTENTION_IMPLS: importing packing would load torch before exec
        choices=["per_cell", "nested", "varlen", "cudnn"],
        help="packed attention kernel (default: varlen on CUDA, per_cell on CPU; "
        "varlen and cudnn call the CUDA kernels directly)",
    )
    serve.add_argument(
        "--compile",
        choices=["0", "1"],
        help="encoder blocks under torch.compile: 1 or 0 (default: 1 on CUDA, 0 on CPU; "
        "compiles at start-up, falls back to eager if compiling fails)",
    )
    serve.add_argument(
        "--token-file",
        help="require 'Authorization: Bearer <token in file>' (or set SCSTRATA_TOKEN)",
    )
    serve.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks: of a model that fails to load, and BentoML's own start-up errors",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        help="worker processes: a number, or auto (default): one per GPU, each pinned to its "
        "GPU (1 without GPUs); on a CPU host N workers share the cores",
    )
    serve.set_defaults(run=_serve)

    fab = sub.add_parser(
        "fabricate",
        help="write a small checkpoint in a family's published layout with RANDOM demo weights",
    )
    fab.add_argument("--family", default="scfoundation", choices=sorted(FAMILIES))
    fab.add_argument("--out", required=True, help="folder to write the checkpoint into")
    fab.add_argument("--hidden", type=int, default=64, help="hidden size")
    fab.add_argument("--n-layers", "--depth", type=int, default=6, help="transformer blocks")
    fab.add_argument("--n-heads", "--heads", type=int, default=4, help="attention heads")
    fab.add_argument("--seed", type=int, default=0)
    fab.set_defaults(run=_fabricate)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
