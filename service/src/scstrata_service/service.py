"""The BentoML service: thin glue between HTTP and the engine.

``POST /embed`` is itself the adaptive-batching endpoint over a list of request items
(serving-notes.md: a batchable API takes one parameter, and internal calls to another
batchable method or service fail under load). ``GET /models`` lists the model cards.
"""

from __future__ import annotations

import io
import logging

import bentoml
import numpy as np
import pybase64  # SIMD base64: ~30x the stdlib's speed on large payloads
from bentoml.exceptions import ServiceUnavailable
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scstrata_service.dispatch import allow_overlapping_dispatches
from scstrata_service.engine import EmbedJob, JobResult, run_jobs
from scstrata_service.metrics import record_worker
from scstrata_service.middleware import ScstrataMiddleware
from scstrata_service.packing import AcceleratorOutOfMemory
from scstrata_service.registry import Registry, active, is_loaded, set_active, specs_from_env
from scstrata_service.schemas import MAX_LISTED, EmbedItem, EmbedResult, LayerRows
from scstrata_service.settings import SETTINGS
from scstrata_service.startup import BackgroundLoad, LoadingGate, arm_main_process
from scstrata_service.workers import bentoml_resources, current_placement, place_this_worker

log = logging.getLogger(__name__)

# The next dispatch waits, ready, while the previous one computes (dispatch.py explains why)
allow_overlapping_dispatches(SETTINGS.dispatches)
# A worker that cannot load its models stops the server, which then exits 1 (startup.py)
arm_main_process()


async def list_models(request: Request) -> JSONResponse:
    return JSONResponse([card.model_dump() for card in active().cards()])


async def worker(request: Request) -> JSONResponse:
    """Which worker answered and where it runs (one connection goes to one worker)."""
    placement = current_placement()
    return JSONResponse(placement.as_dict() if placement else {})


models_app = Starlette(
    routes=[
        Route("/models", list_models, methods=["GET"]),
        Route("/worker", worker, methods=["GET"]),
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
)
class Embedder:
    def __init__(self) -> None:
        # In a thread: the worker listens (and /livez answers) while the models load
        self.loading = BackgroundLoad(self._load)

    def _load(self) -> Registry:
        # here, not in __init__: torch's current CUDA device is per thread
        placement = place_this_worker(SETTINGS.device, SETTINGS.workers)
        record_worker(placement.worker, placement.device)
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
        return self.loading.ready

    @property
    def registry(self) -> Registry:
        return active()

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.max_batch_items,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def embed(self, items: list[EmbedItem]) -> list[EmbedResult]:
        jobs = [
            EmbedJob(
                backend=self.registry.get(item.model),
                counts=item.counts,
                genes=item.gene_names,
                outputs=item.outputs,
                options=item.options,
                tokens=item.tokens,
            )
            for item in items
        ]
        try:
            results = run_jobs(jobs)
        except AcceleratorOutOfMemory as err:
            raise ServiceUnavailable(str(err)) from None
        return [self._result(item, result) for item, result in zip(items, results)]

    def _result(self, item: EmbedItem, result: JobResult) -> EmbedResult:
        card = self.registry.get(item.model).card
        main, *extra = result.outputs
        common = dict(
            model=item.model,
            pooling=item.pooling,
            n_cells=item.counts.shape[0],
            dim=card.poolings[item.pooling],
            n_unmapped_genes=len(result.unmapped_genes),
            unmapped_genes=result.unmapped_genes[:MAX_LISTED],
        )
        if item.format == "npz":
            return EmbedResult(**common, npz=encode_npz(result))
        return EmbedResult(
            **common,
            layers=as_json_rows(main),
            extra_outputs=[
                LayerRows(pooling=pooling, dim=card.poolings[pooling], layers=as_json_rows(rows))
                for (pooling, _), rows in zip(item.outputs[1:], extra)
            ],
        )


def as_json_rows(layers: dict[int, np.ndarray]) -> dict[str, list[list[float]]]:
    return {str(k): rows.tolist() for k, rows in layers.items()}


def encode_npz(result: JobResult) -> str:
    """All outputs as one base64 .npz (members named in docs/api.md)."""
    arrays: dict[str, np.ndarray] = {}
    main, *extra = result.outputs
    arrays.update({f"layer_{k}": rows for k, rows in main.items()})
    for i, layers in enumerate(extra):
        arrays.update({f"extra{i}_layer_{k}": rows for k, rows in layers.items()})
    arrays["unmapped_genes"] = np.array(result.unmapped_genes[:MAX_LISTED], dtype=str)
    arrays["n_unmapped_genes"] = np.array(len(result.unmapped_genes), dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return pybase64.b64encode(buffer.getvalue()).decode("ascii")


Embedder.add_asgi_middleware(
    ScstrataMiddleware, token=SETTINGS.token, max_body_bytes=SETTINGS.max_body_bytes
)
Embedder.add_asgi_middleware(LoadingGate, is_loaded=is_loaded)
