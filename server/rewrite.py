"""Reading requests and rewriting answers on their way out, for pure-ASGI middleware.

The gateway changes what vLLM's serving layer answers in two ways -- ``usage.breadcrumbs`` added
to successful answers, the OpenAI error envelope given to the few errors FastAPI writes as
``{"detail": ...}`` -- and both are the same operation: let a function edit the JSON object(s)
of an answer whose status it cares about, and fix ``content-length`` where the size changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container
from typing import Any

from starlette.types import Message, Receive, Send

#: ``edit(answer, status)`` returns the object to send instead, or ``None`` to leave it be.
Edit = Callable[[Any, int], Any]


class AnswerEditor:
    """A ``send`` that applies ``edit`` to answers whose status is in ``statuses``.

    A JSON answer is buffered whole and re-encoded. A stream is edited event by event: an SSE
    event is ``data: <json>`` ended by a blank line; ``data: [DONE]``, comments and events
    ``edit`` leaves alone pass byte for byte. Anything else passes untouched.
    """

    def __init__(self, send: Send, edit: Edit, statuses: Container[int]) -> None:
        self.send, self.edit, self.statuses = send, edit, statuses
        self.start: Message | None = None
        self.kind = "other"
        self.buffer = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            ctype = dict(message.get("headers", [])).get(b"content-type", b"")
            if message["status"] in self.statuses:
                if ctype.startswith(b"application/json"):
                    self.kind, self.start = "json", message
                    return
                if ctype.startswith(b"text/event-stream"):
                    self.kind, self.start = "sse", message
            await self.send(message)
            return
        if message["type"] != "http.response.body" or self.kind == "other":
            await self.send(message)
            return
        self.buffer += message.get("body", b"")
        more = message.get("more_body", False)
        if self.kind == "json":
            if not more:
                await self._send_json()
            return
        events, _, self.buffer = self.buffer.rpartition(b"\n\n")
        out = b"".join(self._event(e) + b"\n\n" for e in events.split(b"\n\n")) if events else b""
        if not more:
            out, self.buffer = out + self.buffer, b""
        await self.send({"type": "http.response.body", "body": out, "more_body": more})

    async def _send_json(self) -> None:
        body = self.buffer
        try:
            replacement = self.edit(json.loads(body), self.start["status"])
        except ValueError:  # not JSON after all: the edit does not apply
            replacement = self.edit(None, self.start["status"])
        if replacement is not None:
            body = json.dumps(replacement).encode()
        headers = [(k, v) for k, v in self.start.get("headers", []) if k != b"content-length"]
        await self.send({**self.start,
                         "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body})

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: ") or event == b"data: [DONE]":
            return event
        try:
            replacement = self.edit(json.loads(event[6:]), self.start["status"])
        except ValueError:
            return event
        if replacement is None:
            return event
        return b"data: " + json.dumps(replacement, separators=(",", ":")).encode()


async def read_body(receive: Receive) -> bytes:
    """The whole request body (a client that disconnects first gives what arrived)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
