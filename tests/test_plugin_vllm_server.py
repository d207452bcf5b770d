"""vLLM's own OpenAI server picks the plugin up from its entry points, with no code change.

``python -m vllm.entrypoints.openai.api_server`` on a beacon checkpoint: the per-request ratio
arrives through ``vllm_xargs``, an unsupported ratio fails that request with a 400 naming the
supported set (and the server keeps serving), and the plugin's counters appear on vLLM's own
``/metrics``, shipped from the EngineCore process by the stat-logger plugin.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from servers import free_port, stop, wait_until_up

from breadcrumbs_vllm.spec import BeaconSchedule

pytestmark = pytest.mark.vllm


def beacons_metric(base: str, ratio: int) -> float:
    text = httpx.get(f"{base}/metrics").text
    series = rf'breadcrumbs_beacons_inserted_total{{engine="0",model_name="[^"]*",ratio="{ratio}"}}'
    found = re.search(rf'^{series} (\S+)$', text,
                      flags=re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_vllm_openai_server_serves_beacon_models_with_the_plugin(tiny_checkpoint, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
           str(tiny_checkpoint), "--served-model-name", "tiny", "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--block-size", "32",
           "--max-model-len", "1024"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = tmp_path / "vllm.log"
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_up(f"{base}/health", proc, log, timeout=240)
        body = {"model": "tiny", "prompt": [10, 11, 12, 13, 14], "max_tokens": 40,
                "temperature": 0, "ignore_eos": True, "vllm_xargs": {"compression_ratio": 8}}
        resp = httpx.post(f"{base}/v1/completions", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == 40  # beacons are not output tokens
        expected = BeaconSchedule(5, 8).num_beacons_fed(39)  # the last token is never fed
        deadline = time.monotonic() + 10
        while beacons_metric(base, 8) < expected and time.monotonic() < deadline:
            time.sleep(0.2)  # stat loggers run after the engine step that finished the request
        assert beacons_metric(base, 8) == expected

        bad = httpx.post(f"{base}/v1/completions",
                         json={**body, "vllm_xargs": {"compression_ratio": 3}}, timeout=60)
        assert bad.status_code == 400 and "supported: 2, 4, 8, 16" in bad.text
        again = httpx.post(f"{base}/v1/completions", json=body, timeout=120)
        assert again.status_code == 200 and again.json()["choices"][0]["text"] == \
            resp.json()["choices"][0]["text"]  # greedy, same request: the engine is unharmed
    finally:
        stop(proc)
