"""Gateway parts that need no engine: the ratio policy, usage accounting, remote routing and
the bundled-model lookup of ``breadcrumbs serve``. Remote upstreams are faked with httpx's
``MockTransport`` speaking the vLLM OpenAI server's wire format."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient

from breadcrumbs_vllm.checkpoint import (
    BreadcrumbsConfig,
    init_model,
    read_breadcrumbs_config,
    save_checkpoint,
)
from breadcrumbs_vllm.cli import serve
from breadcrumbs_vllm.vllm_plugin.compression import resolve_ratio
from server import Settings, create_app
from server.compression import KVState, RatioPolicy, choice_savings
from server.engines.remote import RemoteBackend, parse_upstream_metrics
from server.errors import APIError

CONFIG = BreadcrumbsConfig(beacon_token_id=4, ratios=[2, 4, 8, 16])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, tokenizer, bc = init_model(2, 64)
    return save_checkpoint(model, tokenizer, bc, tmp_path_factory.mktemp("u") / "tiny")


# ---------------------------------------------------------------- ratio policy
@pytest.mark.parametrize("usage, expected", [
    (0.0, None),      # idle: no compression
    (0.70, None),     # 0.70 + 100/1000 is exactly the target
    (0.71, 2),        # 0.71 + 0.100 > 0.8, 0.71 + 0.056 fits
    (0.75, 4),
    (0.77, 8),
    (0.78, 8),        # nothing fits: the smallest peak (8 peaks below 16 here)
    (0.95, 8),
])
def test_auto_takes_least_compression_that_fits(usage, expected):
    policy = RatioPolicy(CONFIG, kv_target=0.8)
    # prompt 10, max_tokens 90: peaks 100 (none), 56 (2), 36 (4), 29 (8), 31 (16)
    assert policy.resolve("auto", KVState(usage, 1000), 10, 90, 1) == expected


def test_auto_without_pool_size_uses_usage_alone():
    policy = RatioPolicy(CONFIG, kv_target=0.8)
    assert policy.resolve("auto", KVState(0.5, None), 10, 90, 1) is None
    assert policy.resolve("auto", KVState(0.9, None), 10, 90, 1) == 8
    assert policy.resolve("auto", KVState(0.9, None), 10, 2000, 1) == 16


def test_explicit_ratios_are_checked_against_the_model():
    policy = RatioPolicy(CONFIG, kv_target=0.8)
    assert policy.resolve(8, KVState(0.99, 1000), 10, 90, 1) == 8
    assert policy.resolve(0, KVState(0.0, 1000), 10, 90, 1) is None
    for bad in (3, 1, -2, 32):
        with pytest.raises(APIError, match="supported: 2, 4, 8, 16") as info:
            policy.check(bad)
        assert info.value.status == 400


def test_savings_follow_the_spec_schedule():
    # P=10, c=4, 13 generated -> 12 fed: 2 beacons, held 10 + 2 + 4 = 16 vs 22 uncompressed.
    s = choice_savings(10, 4, 13, block_size=8)
    assert (s.beacons, s.entries_saved, s.blocks_saved) == (2, 6, 1)
    assert s.peak_entries == 16
    assert choice_savings(10, None, 13, 8).entries_saved == 0


# ---------------------------------------------------------------- remote mode
def test_parse_upstream_metrics():
    text = ('vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
            'vllm:cache_config_info{block_size="32",num_gpu_blocks="100",x="y"} 1.0\n')
    assert parse_upstream_metrics(text) == (0.25, 3200)
    assert parse_upstream_metrics("") == (0.0, None)


class FakeVLLM:
    """Two vLLM servers: per-URL KV usage and health, and a record of forwarded bodies."""

    def __init__(self) -> None:
        self.usage = {"a": 0.6, "b": 0.1}
        self.healthy = {"a": True, "b": True}
        self.bodies: list[tuple[str, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        path = request.url.path
        if path == "/health":
            return httpx.Response(200 if self.healthy[host] else 503)
        if path == "/metrics":
            return httpx.Response(200, text=f"vllm:kv_cache_usage_perc{{engine=\"0\"}} "
                                            f"{self.usage[host]}\n")
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "upstream-model"}]})
        body = json.loads(request.content)
        self.bodies.append((host, body))
        chunks = [{"choices": [{"index": 0, "text": t, "token_ids": [7],
                                "finish_reason": f}]} for t, f in
                  (("he", None), ("ll", None), ("o", "length"))]
        sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})


def test_remote_routes_to_least_loaded_healthy_backend(checkpoint):
    from vllm.entrypoints.openai.completion.protocol import (
        CompletionRequest as VLLMCompletionRequest,
    )

    fake = FakeVLLM()
    settings = Settings(model=checkpoint, served_model_name="tiny",
                        backends="http://a:8000,http://b:8000", health_interval_s=3600)
    backend = RemoteBackend(settings, transport=httpx.MockTransport(fake))
    with TestClient(create_app(settings, backend=backend)) as client:
        assert client.get("/ready").status_code == 200
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 3, "compression_ratio": 8}
        resp = client.post("/v1/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["text"] == "hello"
        assert resp.json()["usage"]["completion_tokens"] == 3
        assert resp.json()["usage"]["breadcrumbs"]["ratio"] == 8
        host, sent = fake.bodies[-1]
        assert host == "b" and sent["vllm_xargs"] == {"compression_ratio": 8}
        assert sent["model"] == "upstream-model" and sent["prompt"] == [
            int(t) for t in sent["prompt"]]
        # Whatever the gateway resolved (a ratio or none), vLLM's own request schema accepts the
        # body and the plugin on the upstream resolves the same ratio from it.
        bc = read_breadcrumbs_config(checkpoint)
        for ratio in (8, None):
            client.post("/v1/completions", json={**body, "compression_ratio": ratio})
            sent = fake.bodies[-1][1]
            request = VLLMCompletionRequest.model_validate(sent)
            assert resolve_ratio(request.to_sampling_params(16).extra_args, bc) == ratio

        fake.healthy["b"] = False
        client.portal.call(backend.poll_once)
        client.post("/v1/completions", json=body)
        assert fake.bodies[-1][0] == "a"

        fake.healthy["a"] = False
        client.portal.call(backend.poll_once)
        assert client.get("/ready").status_code == 503
        resp = client.post("/v1/completions", json=body)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "backend_unavailable"


# ---------------------------------------------------------------- breadcrumbs serve
def test_serve_prefers_the_bundled_model(tmp_path, monkeypatch, checkpoint):
    monkeypatch.setattr(serve, "REPO_ROOT", tmp_path)
    assert serve.bundled_model() is None
    (tmp_path / "models" / "plain").mkdir(parents=True)
    (tmp_path / "models" / "plain" / "config.json").write_text("{}")  # no breadcrumbs block
    assert serve.bundled_model() is None
    bundled = tmp_path / "models" / "student"
    bundled.mkdir()
    (bundled / "config.json").write_text((checkpoint / "config.json").read_text())
    assert serve.bundled_model() == bundled
