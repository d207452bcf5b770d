"""``breadcrumbs serve`` as a new user runs it: no flags but a port, answers chat within a minute.

Starts its own engine in a subprocess (run under ``flock /tmp/bc-cpu.lock``). With no bundled
model in ``models/`` the command creates a random one in the (temporary) cache folder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.vllm


def test_serve_answers_chat_within_a_minute(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [sys.executable, "-m", "breadcrumbs_vllm.cli", "serve", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
    start = time.monotonic()
    try:
        base = f"http://127.0.0.1:{port}"
        while time.monotonic() - start < 60:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        assert time.monotonic() - start < 60, "serve took over a minute to answer"
        assert reply.usage.completion_tokens >= 1
        out = (tmp_path / "serve.log").read_text()
        assert f"http://127.0.0.1:{port}/v1" in out and "compression ratios: " in out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
