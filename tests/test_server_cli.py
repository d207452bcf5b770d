"""``breadcrumbs serve`` as a new user runs it: no flags but a port, answers chat within a minute.

Starts its own engine in a subprocess, on the bundled model in ``models/`` (with none there, the
command would create a random one in the temporary cache folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import openai
import pytest
from servers import free_port, stop, wait_until_up

pytestmark = pytest.mark.vllm


def test_serve_answers_chat_within_a_minute(tmp_path):
    port = free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [sys.executable, "-m", "breadcrumbs_vllm.cli", "serve", "--port", str(port)]
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            text=True)
    start = time.monotonic()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/ready", proc, log, timeout=60)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        assert time.monotonic() - start < 60, "serve took over a minute to answer"
        assert reply.usage.completion_tokens >= 1
        out = log.read_text()
        assert f"http://127.0.0.1:{port}/v1" in out and "compression ratios: " in out
    finally:
        stop(proc)
