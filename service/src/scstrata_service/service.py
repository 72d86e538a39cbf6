"""The BentoML service: thin glue between HTTP and the engine.

``POST /embed`` is itself the adaptive-batching endpoint over a list of request items
(serving-notes.md: a batchable API takes one parameter, and internal calls to another
batchable method or service fail under load). ``GET /models`` lists the model cards.
"""

from __future__ import annotations

import logging

import bentoml
from bentoml.exceptions import ServiceUnavailable
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scstrata_service.engine import EmbedJob, run_jobs
from scstrata_service.packing import AcceleratorOutOfMemory
from scstrata_service.registry import Registry, active, set_active, specs_from_env
from scstrata_service.schemas import MAX_LISTED, EmbedItem, EmbedResult
from scstrata_service.settings import SETTINGS

log = logging.getLogger(__name__)


async def list_models(request: Request) -> JSONResponse:
    return JSONResponse([card.model_dump() for card in active().cards()])


models_app = Starlette(routes=[Route("/models", list_models, methods=["GET"])])


@bentoml.asgi_app(models_app, path="/")
@bentoml.service(name="scstrata", workers=1, traffic={"timeout": 3600})
class Embedder:
    def __init__(self) -> None:
        self.registry = Registry.load(specs_from_env(), **SETTINGS.backend_settings())
        set_active(self.registry)
        for card in self.registry.cards():
            log.info(
                "serving %s (%s, %d layers%s)",
                card.name,
                card.family,
                card.n_layers,
                ", RANDOM DEMO WEIGHTS" if card.demo_weights else "",
            )

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
                genes=item.genes,
                layers=item.resolved_layers,
                pooling=item.pooling,
                options=item.options,
            )
            for item in items
        ]
        try:
            results = run_jobs(jobs)
        except AcceleratorOutOfMemory as err:
            raise ServiceUnavailable(str(err)) from None
        return [
            EmbedResult(
                model=item.model,
                pooling=item.pooling,
                n_cells=item.counts.shape[0],
                dim=self.registry.get(item.model).card.poolings[item.pooling],
                layers={str(k): rows.tolist() for k, rows in result.layers.items()},
                n_unmapped_genes=len(result.unmapped_genes),
                unmapped_genes=result.unmapped_genes[:MAX_LISTED],
            )
            for item, result in zip(items, results)
        ]
