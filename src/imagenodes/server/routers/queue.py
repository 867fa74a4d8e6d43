"""Discovery, health, the catalog and the queue's state (``/v1``, ``/v1/healthz``,
``/v1/readyz``, ``/v1/nodes``, ``/v1/queue``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from imagenodes.server import pools
from imagenodes.server.schemas import ERRORS
from imagenodes.server.service import JobService
from imagenodes.server.settings import ServerSettings

API_VERSION = "1"


def router(service: JobService, settings: ServerSettings) -> APIRouter:
    import imagenodes

    api = APIRouter(tags=["service"])
    host = service.host

    @api.get("/v1", summary="Discovery: version and links")
    async def discovery() -> dict[str, Any]:
        return {
            "name": "imagenodes",
            "version": imagenodes.__version__,
            "api": API_VERSION,
            "links": {
                "nodes": "/v1/nodes",
                "jobs": "/v1/jobs",
                "uploads": "/v1/uploads",
                "queue": "/v1/queue",
                "health": "/v1/healthz",
                "ready": "/v1/readyz",
                "openapi": "/openapi.json",
            },
        }

    @api.get("/v1/healthz", summary="Liveness: answers at once, also while generating")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get(
        "/v1/readyz",
        summary="Readiness: STARTING, COLD (the default model not loaded yet), READY or BUSY",
    )
    async def readyz() -> JSONResponse:
        counts = await pools.read(service, service.store.counts)
        paused = await pools.read(service, service.store.get_flag, "paused")
        running = len(service.running())
        loaded = await pools.read(service, service.model_loaded) if service.ready else False
        if not service.ready:
            state = "STARTING"  # also while --preload loads the model
        elif running:
            state = "BUSY"
        else:  # READY only once the default model is loaded: the next job pays no load
            state = "COLD" if loaded is False else "READY"
        body = {
            "status": state,
            "queue_depth": counts["queued"],
            "running": running,
            "paused": paused,
            "model_loaded": loaded,
        }
        return JSONResponse(body, status_code=503 if state == "STARTING" else 200)

    @api.get("/v1/nodes", summary="The node catalog", tags=["nodes"])
    async def nodes() -> dict[str, Any]:
        return {"nodes": await asyncio.to_thread(host.catalog)}

    @api.get("/v1/nodes/{node_id}", summary="One catalog entry", responses=ERRORS, tags=["nodes"])
    async def node(node_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(host.catalog_entry, node_id)  # UNKNOWN_NODE → 404

    @api.get("/v1/queue", summary="Queue state", tags=["queue"])
    async def queue() -> dict[str, Any]:
        counts = await pools.read(service, service.store.counts)
        paused = await pools.read(service, service.store.get_flag, "paused")
        return {
            "paused": paused,
            "depth": counts["queued"],
            "running": service.running(),
            "counts": counts,
            "max_queue": settings.max_queue,
            "workers": service.workers,
        }

    @api.post("/v1/queue/pause", summary="Stop starting jobs (running ones finish)", tags=["queue"])
    async def pause() -> dict[str, bool]:
        await asyncio.to_thread(service.store.set_flag, "paused", True)
        return {"paused": True}

    @api.post("/v1/queue/resume", summary="Start jobs again", tags=["queue"])
    async def resume() -> dict[str, bool]:
        await asyncio.to_thread(service.store.set_flag, "paused", False)
        return {"paused": False}

    return api
