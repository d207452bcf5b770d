"""Request and response bodies of the OpenAI-compatible API, plus the ``breadcrumbs`` extensions.

Requests forbid unknown fields so that a client asking for something we do not implement (say
``logprobs``) gets a clear 422 instead of a silently different answer. Numeric ranges that do not
depend on the deployment are enforced here (and so appear in the OpenAPI schema); deployment caps
(``max_tokens``, ``n``, prompt length) are checked against ``Settings`` in the service.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

SEED_MAX = 2**63 - 1

StopString = Annotated[StrictStr, Field(min_length=1, max_length=256)]
RatioField = Annotated[
    StrictInt | Literal["auto"] | None,
    Field(description="beacon compression ratio: an int the model supports, null for none, or "
                      "'auto' (least compression that keeps projected KV usage under target)"),
]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by chat and completions requests (one definition, two routes)."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1)] = 1
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: Annotated[StrictInt, Field(ge=0, le=SEED_MAX)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = Field(None, description="accepted for compatibility; never logged")
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past EOS")
    compression_ratio: RatioField = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None

    def requested_max_tokens(self) -> int | None:
        """OpenAI's newer name wins over the deprecated ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: StrictStr | Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)] = \
        Field(description="a string, or token ids")


class BreadcrumbsUsage(BaseModel):
    """What compression did for this request (summed over its ``n`` choices)."""

    ratio: int | None
    beacons_inserted: int
    peak_kv_entries: int
    kv_entries_saved: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    breadcrumbs: BreadcrumbsUsage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    """A non-streamed completion; streamed chunks have the same shape with ``usage`` optional."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "breadcrumbs"
    compression_ratios: list[int] = Field(description="ratios `compression_ratio` may take")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
