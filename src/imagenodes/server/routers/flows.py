"""``POST /v1/flows/run``: a seed-003 flow document run as one job."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse

from imagenodes.flows.model import FlowRequest
from imagenodes.server.requests import body_type
from imagenodes.server.routers.jobs import submitted
from imagenodes.server.schemas import SUBMITTED, Job
from imagenodes.server.service import JobService
from imagenodes.server.settings import ServerSettings


def router(service: JobService, settings: ServerSettings, flow_body: Any) -> APIRouter:
    """``flow_body`` is the typed flow request (the document parsed once, here)."""
    api = APIRouter(tags=["flows"])

    @body_type(flow_body)
    async def post_flow(
        request_: FlowRequest, prefer: str | None = Header(default=None)
    ) -> JSONResponse:
        from imagenodes.flows.runner import FlowRunner

        # Every step that can be checked before anything runs is (a wired step too);
        # the parsed document is checked, stored and run — never parsed again here.
        await asyncio.to_thread(FlowRunner(service.host).preflight, request_.flow, request_.inputs)
        job, _ = await asyncio.to_thread(service.submit, request_.job_body(), kind="flow")
        return await submitted(service, settings, job, prefer)

    api.post(
        "/v1/flows/run",
        status_code=202,
        response_model=Job,
        summary="Run a seed-003 flow as one job (events name the step)",
        responses=SUBMITTED,
    )(post_flow)
    return api
