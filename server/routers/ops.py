"""``/health`` (process up), ``/ready`` (engine loaded and answering), ``/metrics`` and
``/get_load`` (the vLLM Router's load figure, ``breadcrumbs_vllm/vllm_plugin/load.py``).

These stay outside API-key auth so orchestrators and Prometheus can reach them; they expose no
request content. ``/metrics`` serves the process's default registry: the gateway's
``breadcrumbs_gateway_*`` families, and in embedded mode vLLM's ``vllm:*`` and the plugin's
``breadcrumbs_*`` ones too.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from server.errors import APIError, error_response

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    backend = request.app.state.backend
    if await backend.ready():
        return JSONResponse({"status": "ready", "backend": backend.name})
    return error_response(APIError(503, "engine not ready"))


@router.get("/metrics")
async def prometheus() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/get_load")
async def get_load(request: Request) -> dict[str, int]:
    return {"load": await request.app.state.backend.load()}
