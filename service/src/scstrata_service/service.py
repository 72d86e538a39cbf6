"""The BentoML service: thin glue between HTTP and the engine.

``POST /embed`` is itself the adaptive-batching endpoint over a list of request items
(serving-notes.md: a batchable API takes one parameter, and internal calls to another
batchable method or service fail under load). A request reaches it admitted: the middleware
reads the body and :func:`admit_body` (admission.py) parses and checks it on a worker thread;
BentoML then batches the items' tickets, :meth:`Embedder.embed` runs them, and each item's
reply, made here off the event loop, is written once by the middleware. ``GET /models``
lists the model cards.
"""

from __future__ import annotations

import io
import json
import logging

import bentoml
import numpy as np
import pybase64  # SIMD base64: ~30x the stdlib's speed on large payloads
from bentoml._internal.context import server_context  # where BentoML keeps service_version
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from scstrata_service import connections, openapi
from scstrata_service.admission import (
    BACKLOG,
    Admission,
    Admitted,
    Reply,
    admit,
    admitted,
    busy,
)
from scstrata_service.coverage import Coverage
from scstrata_service.dispatch import allow_overlapping_dispatches
from scstrata_service.engine import JobFailure, JobResult, run_jobs
from scstrata_service.info import SERVICE_VERSION, server_info
from scstrata_service.metrics import record_worker
from scstrata_service.middleware import NPZ_MEDIA_TYPE, ScstrataMiddleware
from scstrata_service.registry import Registry, active, is_loaded, set_active, specs_from_env
from scstrata_service.schemas import MAX_LISTED, EmbedResult, LayerRows, TicketItem
from scstrata_service.settings import SETTINGS
from scstrata_service.startup import (
    LOADING_MESSAGE,
    BackgroundLoad,
    arm_main_process,
    exit_with_parent,
    in_bentoml_worker,
)
from scstrata_service.traffic_timeout import cancel_request_timers
from scstrata_service.workers import bentoml_resources, current_placement, place_this_worker

log = logging.getLogger(__name__)

# The next dispatch waits, ready, while the previous one computes (dispatch.py explains why)
allow_overlapping_dispatches(SETTINGS.dispatches)
# A request's timeout timer ends with its reply, not an hour later (traffic_timeout.py)
cancel_request_timers()
# A worker that cannot load its models stops the server, which then exits 1 (startup.py)
arm_main_process()
# A worker outlives neither the server's main process (startup.py) nor its own file limit:
# connections are capped below it, and request heads have a deadline (connections.py)
exit_with_parent()
if in_bentoml_worker():
    connections.install(SETTINGS)


async def list_models(request: Request) -> JSONResponse:
    if not is_loaded():
        refused = busy(LOADING_MESSAGE)
        return JSONResponse(refused.body(), refused.status, dict(refused.headers))
    return JSONResponse([card.model_dump() for card in active().cards()])


async def worker(request: Request) -> JSONResponse:
    """Which worker answered and where it runs (one connection goes to one worker)."""
    placement = current_placement()
    return JSONResponse(placement.as_dict() if placement else {})


async def info(request: Request) -> JSONResponse:
    placement = current_placement()
    registry = active() if is_loaded() else None
    return JSONResponse(server_info(registry, placement.as_dict() if placement else None, BACKLOG))


async def api_document(request: Request) -> JSONResponse:
    item = models = None
    if is_loaded():
        backend = next(iter(active().backends.values()))
        item = openapi.example_item(backend.card, backend.known_genes())
        models = list(active().backends)
    return JSONResponse(openapi.document(item, models))


async def api_page(request: Request) -> HTMLResponse:
    return HTMLResponse(openapi.PAGE)


# Mounted before BentoML's own routes: "/" and "/docs.json" replace its page and document
models_app = Starlette(
    routes=[
        Route("/models", list_models, methods=["GET"]),
        Route("/worker", worker, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/docs.json", api_document, methods=["GET"]),
        Route("/", api_page, methods=["GET"]),
    ]
)


@bentoml.asgi_app(models_app, path="/")
# threads: the sync embed() of each dispatch in flight gets its own thread
# workers: one process per GPU by default (workers.py pins each to its device)
@bentoml.service(
    name="scstrata",
    workers=SETTINGS.workers,
    resources=bentoml_resources(SETTINGS.gpus),
    threads=SETTINGS.dispatches,
    traffic={"timeout": 3600},
    backlog=SETTINGS.backlog,  # also what a worker accepts at once (connections.py)
)
class Embedder:
    def __init__(self) -> None:
        # BentoML labels its series with the Bento's version; served from source it has none
        if server_context.bento_version == "not available":
            server_context.bento_version = SERVICE_VERSION
        # In a thread: the worker listens (and /livez answers) while the models load
        self.loading = BackgroundLoad(self._load)

    def _load(self) -> Registry:
        # here, not in __init__: torch's current CUDA device is per thread
        placement = place_this_worker(SETTINGS.device, SETTINGS.workers)
        record_worker(placement.worker, placement.device)
        from scstrata_service.runtime.device import apply_threads  # torch: only in workers

        apply_threads()  # SCSTRATA_THREADS, else the CPUs this process may use (torch and BLAS)
        registry = Registry.load(
            specs_from_env(), **SETTINGS.backend_settings(device=placement.device)
        )
        set_active(registry)
        for card in registry.cards():
            log.info(
                "worker %d/%d serving %s (%s, %d layers%s) on %s",
                placement.worker,
                placement.workers,
                card.name,
                card.family,
                card.n_layers,
                ", RANDOM DEMO WEIGHTS" if card.demo_weights else "",
                placement.device,
            )
        return registry

    def __is_ready__(self) -> bool:
        """Ready once the models are in, and not while the backlog of admitted work is at its
        bound (new requests get 503)."""
        return self.loading.ready and not BACKLOG.full

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.max_batch_items,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def embed(self, items: list[TicketItem]) -> list[EmbedResult]:
        # Replies travel through the items' tickets (admission.py); BentoML's own reply holds
        # placeholders, which the middleware does not send.
        found = [_admitted(item.ticket) for item in items]
        live = [a for a in found if a is not None]
        for item, result in zip(live, run_jobs([a.job for a in live])):
            item.reply = reply_for(item, result)
        return [_placeholder(item) for item in items]


def _admitted(ticket: str | None) -> Admitted | None:
    try:
        return admitted(ticket or "")
    except KeyError:  # its request is gone already (the client left)
        return None


def _placeholder(item: TicketItem) -> EmbedResult:
    return EmbedResult(
        model=item.model,
        pooling=item.pooling,
        n_cells=0,
        dim=0,
        n_unmapped_genes=0,
        unmapped_genes=[],
    )


def admit_body(body: bytes, accept_npz: bool) -> Admission:
    """Admission of one request body against the served models (called by the middleware)."""
    if not is_loaded():
        raise busy(LOADING_MESSAGE)
    return admit(body, active(), accept_npz)


def reply_for(item: Admitted, result: JobResult | JobFailure) -> Reply:
    """One item's reply: its JSON result, its raw .npz, or its failure."""
    if isinstance(result, JobFailure):
        headers = {"retry-after": str(SETTINGS.retry_after_s)} if result.status == 503 else {}
        body = {
            "error": result.message,
            "detail": [{"loc": ["items"], "msg": result.message, "type": "error"}],
        }
        return Reply(result.status, "application/json", json.dumps(body).encode(), headers)
    spec, card = item.item, item.card
    main, *extra = result.outputs
    common = dict(
        model=spec.model,
        pooling=spec.pooling,
        n_cells=item.n_cells,
        dim=card.poolings[spec.pooling],
        n_unmapped_genes=len(result.unmapped_genes),
        unmapped_genes=result.unmapped_genes[:MAX_LISTED],
    )
    reached = item.reached
    if reached is not None:
        common["mapped_gene_fraction"] = reached.gene_fraction
    if spec.format == "npz":
        raw = encode_npz(result, reached)
        if item.raw_npz:
            return Reply(200, NPZ_MEDIA_TYPE, raw)
        wrapped = EmbedResult(**common, npz=pybase64.b64encode(raw).decode("ascii"))
        return Reply(200, "application/json", wrapped.model_dump_json().encode())
    reply = EmbedResult(
        **common,
        mapped_count_fraction=reached.cell_count_fractions.tolist() if reached else None,
        layers=as_json_rows(main),
        extra_outputs=[
            LayerRows(pooling=pooling, dim=card.poolings[pooling], layers=as_json_rows(rows))
            for (pooling, _), rows in zip(item.job.outputs[1:], extra)
        ],
    )
    return Reply(200, "application/json", reply.model_dump_json().encode())


def as_json_rows(layers: dict[int, np.ndarray]) -> dict[str, list[list[float]]]:
    return {str(k): rows.tolist() for k, rows in layers.items()}


def encode_npz(result: JobResult, reached: Coverage | None = None) -> bytes:
    """All outputs as one .npz (members named in docs/api.md)."""
    arrays: dict[str, np.ndarray] = {}
    main, *extra = result.outputs
    arrays.update({f"layer_{k}": rows for k, rows in main.items()})
    for i, layers in enumerate(extra):
        arrays.update({f"extra{i}_layer_{k}": rows for k, rows in layers.items()})
    arrays["unmapped_genes"] = np.array(result.unmapped_genes[:MAX_LISTED], dtype=str)
    arrays["n_unmapped_genes"] = np.array(len(result.unmapped_genes), dtype=np.int64)
    if reached is not None:
        arrays["mapped_count_fraction"] = reached.cell_count_fractions
        arrays["mapped_gene_fraction"] = np.array(reached.gene_fraction, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


Embedder.add_asgi_middleware(ScstrataMiddleware, settings=SETTINGS, admit=admit_body)
