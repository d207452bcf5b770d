"""``/health`` (process up), ``/ready`` (engine loaded and answering) and ``/metrics``.

These stay outside API-key auth so orchestrators and Prometheus can reach them; they expose no
request content.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from server import metrics
from server.errors import ErrorResponse

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", responses={503: {"model": ErrorResponse}})
async def ready(request: Request) -> JSONResponse:
    backend = request.app.state.service.backend
    if await backend.ready():
        return JSONResponse({"status": "ready", "backend": backend.name})
    return JSONResponse({"error": {"message": "engine not ready", "type": "service_unavailable",
                                   "param": None, "code": "not_ready"}}, status_code=503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
async def prometheus(request: Request) -> Response:
    backend = request.app.state.service.backend
    metrics.KV_USAGE.labels(backend.name).set(backend.kv_state().usage)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
