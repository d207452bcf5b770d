"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``.

Both generation routes are thin: they hand the parsed body and their ``RouteFormat`` to the
shared ``GenerationService``. Every documented error status uses the OpenAI error envelope so
the OpenAPI schema (checked by schemathesis) matches what the app really sends.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from server.dependencies import rate_limited
from server.errors import ErrorResponse
from server.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from server.service import ChatFormat, CompletionFormat, GenerationService

_ERRORS = {status: {"model": ErrorResponse}
           for status in (400, 401, 404, 413, 422, 429, 500, 503)}
_STREAM = {"text/event-stream": {"schema": {"type": "string"}}}

router = APIRouter(prefix="/v1", dependencies=[Depends(rate_limited)], responses=_ERRORS)
_CHAT, _COMPLETIONS = ChatFormat(), CompletionFormat()


def service(request: Request) -> GenerationService:
    return request.app.state.service


Service = Annotated[GenerationService, Depends(service)]


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": _STREAM}})
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           svc: Service):
    """Chat completion; ``stream: true`` answers with server-sent events."""
    return await svc.respond(_CHAT, body, request)


@router.post("/completions", response_model=Completion, responses={200: {"content": _STREAM}})
async def completions(body: CompletionRequest, request: Request,
                      svc: Service):
    """Text completion from a string or token ids; ``stream: true`` answers with SSE."""
    return await svc.respond(_COMPLETIONS, body, request)


@router.get("/models", response_model=ModelList)
async def models(svc: Service) -> ModelList:
    """The one served model, with the compression ratios it supports."""
    return ModelList(data=[ModelCard(id=svc.settings.model_name, created=svc.started,
                                     compression_ratios=svc.policy.ratios)])
