"""vLLM's own OpenAI server picks the plugin up from its entry points, with no code change.

``python -m vllm.entrypoints.openai.api_server`` on a beacon checkpoint: the per-request ratio
arrives through ``vllm_xargs``, an unsupported ratio fails that request with a 400 naming the
supported set (and the server keeps serving), and the plugin's counters appear on vLLM's own
``/metrics``, shipped from the EngineCore process by the stat-logger plugin. With
``VLLM_PLUGINS=breadcrumbs`` the server also answers ``/get_load``, and ``"auto"`` is decided by
the engine's scheduler from its own pool (here with a target no peak fits under, so the choice
is known in advance: the ratio with the smallest peak).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from servers import free_port, stop, wait_until_up

from breadcrumbs_vllm.checkpoint import read_breadcrumbs_config
from breadcrumbs_vllm.spec import BeaconSchedule
from breadcrumbs_vllm.vllm_plugin.kv_budget import TARGET_KEY

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
           "--max-model-len", "1024", "--additional-config", json.dumps({TARGET_KEY: 1e-9})]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_PLUGINS": "breadcrumbs"}
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

        # "auto", decided in the engine: nothing fits under the target, so the smallest peak.
        ratios = read_breadcrumbs_config(tiny_checkpoint).ratios
        chosen = min(ratios, key=lambda c: (BeaconSchedule(5, c).peak_kv_entries(40), c))
        explicit = httpx.post(f"{base}/v1/completions", timeout=120, json={
            **body, "vllm_xargs": {"compression_ratio": chosen}}).json()["choices"][0]["text"]
        auto = httpx.post(f"{base}/v1/completions", timeout=120, json={
            **body, "vllm_xargs": {"compression_ratio": "auto"}})
        assert auto.status_code == 200 and auto.json()["choices"][0]["text"] == explicit
        chat = httpx.post(f"{base}/v1/chat/completions", timeout=120, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20,
            "vllm_xargs": {"compression_ratio": "auto"}})
        assert chat.status_code == 200, chat.text
        assert chat.json()["kv_transfer_params"]["breadcrumbs"]["ratio"] == min(
            ratios, key=lambda c: (BeaconSchedule(chat.json()["usage"]["prompt_tokens"], c)
                                   .peak_kv_entries(20), c))

        # The endpoint plugin's /get_load and the projected gauge, one series per engine; idle
        # now, so both read 0.
        assert httpx.get(f"{base}/get_load").json() == {"load": 0}
        projected = re.findall(r'^breadcrumbs_kv_cache_usage_projected_perc\{(.*)\} (\S+)$',
                               httpx.get(f"{base}/metrics").text, flags=re.MULTILINE)
        assert len(projected) == 1 and 'engine="0"' in projected[0][0]
        assert float(projected[0][1]) == 0.0
    finally:
        stop(proc)
