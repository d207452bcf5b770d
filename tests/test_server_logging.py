"""The gateway never logs prompt text unless ``--log-content`` asks it to (docs/gateway.md).

``breadcrumbs serve`` runs as a user starts it, in a subprocess whose whole output -- the
gateway's, vLLM's serving layer's and the engine core's -- goes to one log file. A chat request
and a completion carry a marker string; after the server stops, the marker is searched in the log.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from servers import free_port, stop, wait_until_up

pytestmark = pytest.mark.vllm

MARKER = "zebra quartz marker 7731"


@pytest.mark.parametrize("log_content", [False, True], ids=["default", "log-content"])
def test_prompt_text_reaches_the_logs_only_with_log_content(tiny_checkpoint, tmp_path,
                                                             log_content: bool):
    port = free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "breadcrumbs_vllm.cli", "serve", "--model",
               str(tiny_checkpoint), "--port", str(port), "--kv-cache-gib", "1"]
    with log.open("w") as out:
        # As a user starts it: without the VLLM_LOGGING_LEVEL=WARNING that an in-process vLLM
        # rollout engine of an earlier test leaves in this process's environment
        # (training/rollouts.py), and unbuffered, since the server is stopped before it exits
        # cleanly and a buffered log would lose its last lines (the marker among them).
        env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}
        proc = subprocess.Popen(command + (["--log-content"] if log_content else []),
                                stdout=out, stderr=subprocess.STDOUT,
                                env=env | {"PYTHONUNBUFFERED": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/ready", proc, log, timeout=300)
        chat = httpx.post(f"{base}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": MARKER}], "max_tokens": 4})
        completion = httpx.post(f"{base}/v1/completions", timeout=120, json={
            "prompt": MARKER, "max_tokens": 4})
        assert chat.status_code == completion.status_code == 200, (chat.text, completion.text)
    finally:
        stop(proc)
    text = log.read_text()
    assert "serving " in text and "INFO" in text, text[-2000:]  # the log is the server's
    assert (MARKER in text) is log_content, text[-3000:]
