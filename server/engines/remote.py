"""Remote mode: forward to one vLLM OpenAI server running the plugin -- a replica, or a router
(the vLLM Router, llm-d) in front of many. Choosing between replicas is the router's job.

Requests reach the upstream as the gateway's layer left them (``compression_ratio`` in
``vllm_xargs``), so the surface is vLLM's own in both modes. Answers stream back as they come;
a client that goes away closes the upstream connection, which makes vLLM abort the request and
free its blocks. ``"auto"`` travels on too: the upstream's engine decides it from its own pool.
A background task polls the upstream's ``/health`` for ``/ready``.
"""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from server import metrics
from server.engines.base import EngineBackend
from server.errors import APIError, error_response
from server.rewrite import read_body
from server.settings import Settings

#: Hop-by-hop headers a proxy must not forward (RFC 9110 7.6.1), plus the recomputed length.
_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
        b"host", b"content-length", b"content-encoding"}


class RemoteBackend(EngineBackend):
    name = "remote"

    def __init__(self, settings: Settings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        """``transport`` lets tests stand in for the upstream server."""
        self.settings = settings
        self.url = settings.upstream.rstrip("/")
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.upstream_timeout_s, connect=5.0), transport=transport)
        self.healthy = False
        self._poller: asyncio.Task | None = None

    async def start(self) -> None:
        await self.poll_once()
        self._poller = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        await self.client.aclose()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            await self.poll_once()

    async def poll_once(self) -> None:
        try:
            health = await self.client.get(f"{self.url}/health", timeout=5.0)
        except httpx.HTTPError:
            self.healthy = False
            return
        self.healthy = health.status_code == 200

    async def ready(self) -> bool:
        return self.healthy

    async def load(self) -> int:
        """The upstream's own ``/get_load`` (a replica with the plugin's endpoint; a router
        has none, and then this is a 503)."""
        try:
            answer = await self.client.get(f"{self.url}/get_load", timeout=5.0)
            return int(answer.raise_for_status().json()["load"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            raise APIError(503, "the upstream serves no /get_load (start it with "
                                "VLLM_PLUGINS=breadcrumbs)") from None

    @property
    def app(self):
        return self._forward

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the request upstream as it is and stream the answer back."""
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        url = f"{self.url}{scope['path']}" + (f"?{scope['query_string'].decode()}"
                                               if scope.get("query_string") else "")
        request = self.client.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.healthy = False
            failed = APIError(503, f"engine backend failed: {type(exc).__name__}")
            await error_response(failed)(scope, receive, send)
            return
        clock = metrics.LatencyClock(scope.get("state", {}).get("route"))
        relay = asyncio.create_task(_relay(response, send, clock))
        left = asyncio.create_task(_client_left(receive))
        try:
            # A client that goes away must not leave the upstream generating: closing the
            # upstream connection is what makes vLLM abort the request and free its blocks.
            await asyncio.wait({relay, left}, return_when=asyncio.FIRST_COMPLETED)
            if relay.done():
                relay.result()  # re-raises what went wrong while relaying
        finally:
            for task in (relay, left):
                task.cancel()
            clock.close()
            await response.aclose()


async def _relay(response: httpx.Response, send: Send, clock: metrics.LatencyClock) -> None:
    """Stream the upstream's answer to the client as it comes."""
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": [(k.lower(), v) for k, v in response.headers.raw
                            if k.lower() not in _HOP]})  # ASGI names are lowercase
    async for chunk in response.aiter_bytes():
        clock.tick()
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
    clock.done()


async def _client_left(receive: Receive) -> None:
    """Return when the client disconnects (the request body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
