"""A dead engine ends the gateway process, so that its supervisor starts a fresh one.

When the engine-core process dies, vLLM's ``AsyncLLM`` marks itself errored at once (its monitor
thread waits on the process's sentinel) and fails every in-flight request with
``EngineDeadError``, which vLLM's serving layer turns into an OpenAI error object (a JSON answer,
or an error event in a stream). ``/ready`` then answers 503, since ``EmbeddedBackend.ready``
reads ``errored``. What is left is the process: a gateway whose engine is gone can serve nothing
again, and restarting an engine in place would leave whatever killed it (usually memory) in
place too, so the gateway exits with :data:`ENGINE_DEAD_EXIT_CODE` after a short grace (for the
error answers to reach their clients) and Docker's ``restart:`` policy or Kubernetes restarts it.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: The gateway's exit status when its engine died (any non-zero status makes supervisors restart).
ENGINE_DEAD_EXIT_CODE = 3


class EngineWatchdog:
    """Polls ``engine.errored``; when it turns true while the gateway is not stopping, waits
    ``grace_s`` and ends the process with ``exit`` (``os._exit``: the engine is gone, and a
    normal shutdown would wait on it)."""

    def __init__(self, engine: Any, grace_s: float = 1.0, poll_s: float = 0.2,
                 exit: Callable[[int], Any] = os._exit) -> None:
        self._engine = engine
        self._grace_s = grace_s
        self._poll_s = poll_s
        self._exit = exit
        self._stopping = False
        self._task: asyncio.Task | None = None
        #: Set by vLLM's engine-error handler, which takes this for the HTTP server (unused:
        #: the watchdog sees the same death and exits on its own).
        self.should_exit = False
        # An interpreter exiting (a test run's end) shuts engines down: that is no death.
        atexit.register(self._mark_stopping)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        """Called before a deliberate engine shutdown."""
        self._mark_stopping()
        if self._task is not None:
            self._task.cancel()
        atexit.unregister(self._mark_stopping)

    def _mark_stopping(self) -> None:
        self._stopping = True

    async def _watch(self) -> None:
        while not self._engine.errored:
            await asyncio.sleep(self._poll_s)
        if self._stopping:
            return
        logger.error("the engine core died; exiting with status %d so the supervisor restarts "
                     "the gateway", ENGINE_DEAD_EXIT_CODE)
        await asyncio.sleep(self._grace_s)
        if not self._stopping:
            self._exit(ENGINE_DEAD_EXIT_CODE)
