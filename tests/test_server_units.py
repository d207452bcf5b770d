"""Gateway parts that need no engine: the ratio policy, usage accounting, remote routing and
the bundled-model lookup of ``breadcrumbs serve``. Remote upstreams are faked with httpx's
``MockTransport`` speaking the vLLM OpenAI server's wire format."""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import pytest
from fastapi.testclient import TestClient

from breadcrumbs_vllm.checkpoint import (
    BreadcrumbsConfig,
    init_model,
    read_breadcrumbs_config,
    save_checkpoint,
)
from breadcrumbs_vllm.vllm_plugin.compression import resolve_ratio
from breadcrumbs_vllm.vllm_plugin.kv_budget import KVProjection, admits, choose_ratio
from breadcrumbs_vllm.vllm_plugin.model import BeaconModel
from breadcrumbs_vllm.vllm_plugin.report import KVLedger
from server import Settings, create_app
from server.cli import serve
from server.compression import RatioPolicy, choice_savings
from server.dependencies import MAX_JSON_DEPTH
from server.engines.remote import RemoteBackend
from server.errors import APIError

CONFIG = BreadcrumbsConfig(beacon_token_id=4, ratios=[2, 4, 8, 16])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, tokenizer, bc = init_model(2, 64)
    return save_checkpoint(model, tokenizer, bc, tmp_path_factory.mktemp("u") / "tiny")


# ---------------------------------------------------------------- ratio policy
@pytest.mark.parametrize("used, growth, expected", [
    (0.0, 0, None),      # idle: no compression
    (0.70, 0, None),     # 0.70 + 100/1000 is exactly the target
    (0.71, 0, 2),        # 0.71 + 0.100 > 0.8, 0.71 + 0.056 fits
    (0.75, 0, 4),
    (0.77, 0, 8),
    (0.78, 0, 8),        # nothing fits: the smallest peak (8 peaks below 16 here)
    (0.95, 0, 8),
    (0.50, 250, 4),      # what running requests will still grow into counts: 0.75 projected
])
def test_auto_takes_least_compression_that_fits(used, growth, expected):
    projection = KVProjection(used=used, growth_tokens=growth, capacity_tokens=1000)
    # prompt 10, max_tokens 90: peaks 100 (none), 56 (2), 36 (4), 29 (8), 31 (16)
    assert choose_ratio(CONFIG.ratios, 10, 90, projection, target=0.8) == expected


def test_auto_never_runs_a_student_uncompressed():
    """A student was trained for its ratios only: idle, "auto" gives it its smallest ratio."""
    idle = KVProjection(used=0.0, growth_tokens=0, capacity_tokens=1000)
    assert choose_ratio(CONFIG.ratios, 10, 90, idle, target=0.8) is None
    assert choose_ratio(CONFIG.ratios, 10, 90, idle, target=0.8, uncompressed=False) == 2
    busy = KVProjection(used=0.77, growth_tokens=0, capacity_tokens=1000)
    assert choose_ratio(CONFIG.ratios, 10, 90, busy, target=0.8, uncompressed=False) == 8
    assert BeaconModel(CONFIG).decodes_uncompressed
    assert not BeaconModel(replace(CONFIG, teacher="../teacher")).decodes_uncompressed


def test_admission_leaves_room_for_what_running_requests_may_still_grow_into():
    running = KVProjection(used=0.5, growth_tokens=300, capacity_tokens=1000)  # 0.8 projected
    assert admits(running, 200, overcommit=0.0)  # exactly the pool
    assert not admits(running, 201, overcommit=0.0)
    assert admits(KVProjection(0.0, 0, 0), 10**6, overcommit=0.0)  # no pool: stock admission
    assert admits(running, 300, overcommit=0.1) and not admits(running, 301, overcommit=0.1)


def test_projected_usage_adds_the_remaining_growth_over_the_pool():
    assert KVProjection(0.25, 500, 2000).usage == 0.5
    assert KVProjection(0.0, 10, 0).usage == 0.0


def test_explicit_ratios_are_checked_against_the_model():
    policy = RatioPolicy(CONFIG)
    assert policy.check(8) == (8, None) and policy.check("auto") == ("auto", None)
    assert policy.check(0) == (None, None) and policy.check("none") == (None, None)
    assert policy.check({"min": 4, "max": 16}) == (4, 16) == policy.check(4, 16)
    for bad in (3, 1, -2, 32, {"min": 16, "max": 4}, {"min": 4, "max": 32}):
        with pytest.raises(APIError, match="2, 4, 8, 16") as info:
            policy.check(bad)
        assert info.value.status == 400
    for bad in ("8", {"min": 4, "max": 16, "step": 2}, {"min": [4]}):
        with pytest.raises(APIError, match="compression_ratio") as info:
            policy.check(bad)
        assert info.value.status == 400


def test_savings_follow_the_spec_schedule():
    # P=10, c=4, 13 generated -> 12 fed: 2 beacons, held 10 + 2 + 4 = 16 vs 22 uncompressed.
    s = choice_savings(10, 4, 13, block_size=8)
    assert (s.beacons, s.entries_saved, s.blocks_saved) == (2, 6, 1)
    assert s.peak_entries == 16
    assert choice_savings(10, None, 13, 8).entries_saved == 0


# ---------------------------------------------------------------- remote mode
class FakeVLLM:
    """One vLLM server with the plugin: health, ``/get_load``, and a record of forwarded bodies.
    Its chat answers report the ratio "auto" chose, as the plugin does, in
    ``kv_transfer_params``."""

    def __init__(self) -> None:
        self.healthy = True
        self.bodies: list[tuple[str, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/health":
            return httpx.Response(200 if self.healthy else 503)
        if path == "/get_load":
            return httpx.Response(200, json={"load": 42})
        body = json.loads(request.content)
        self.bodies.append((path, body))
        if path == "/v1/chat/completions":
            return httpx.Response(200, json={
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17},
                "kv_transfer_params": KVLedger(  # c=2, 5 prompt + 11 fed tokens
                    2, beacons=5, fed_tokens=21, kv_entries=11, peak_kv_entries=12,
                    peak_kv_blocks=1).into(None)})
        if body.get("stream"):
            chunks = [{"choices": [{"index": 0, "text": t, "finish_reason": f}]}
                      for t, f in (("he", None), ("ll", None), ("o", "length"))]
            chunks.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                                     "total_tokens": 8}})
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={
            "choices": [{"index": 0, "text": "hello", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}})


def test_remote_forwards_to_one_upstream_with_the_ratio_in_vllm_xargs(checkpoint):
    from vllm.entrypoints.openai.completion.protocol import (
        CompletionRequest as VLLMCompletionRequest,
    )

    fake = FakeVLLM()
    settings = Settings(model=checkpoint, served_model_name="tiny", upstream="http://a:8000",
                        health_interval_s=3600)
    backend = RemoteBackend(settings, transport=httpx.MockTransport(fake))
    with TestClient(create_app(settings, backend=backend)) as client:
        assert client.get("/ready").status_code == 200
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 9, "compression_ratio": 8,
                "logprobs": 2, "some_vllm_field": True}
        resp = client.post("/v1/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["breadcrumbs"] == {  # a completions answer has no report
            "ratio": 8, "ratio_path": [[0, 8]], "beacons_inserted": 1, "peak_kv_entries": 14,
            "kv_entries_saved": 7, "measured": False}
        path, sent = fake.bodies[-1]
        assert path == "/v1/completions" and sent["vllm_xargs"] == {"compression_ratio": 8}
        assert "compression_ratio" not in sent and sent["logprobs"] == 2 and sent["some_vllm_field"]
        # Whatever the gateway forwards, vLLM's request schema accepts and the plugin on the
        # upstream resolves to the same ratio.
        bc = read_breadcrumbs_config(checkpoint)
        for ratio in (8, None):
            client.post("/v1/completions", json={**body, "compression_ratio": ratio})
            request = VLLMCompletionRequest.model_validate(fake.bodies[-1][1])
            assert resolve_ratio(request.to_sampling_params(16).extra_args, bc) == ratio

        stream = client.post("/v1/completions", json={**body, "stream": True}).text
        events = [json.loads(line[6:]) for line in stream.splitlines()
                  if line.startswith("data: {")]
        assert "".join(c["text"] for e in events for c in e["choices"]) == "hello"
        assert events[-1]["usage"]["breadcrumbs"]["ratio"] == 8

        # "auto" travels on for the upstream's engine to decide; a chat answer says what it
        # chose, a completions answer cannot (vLLM's has no kv_transfer_params).
        resp = client.post("/v1/completions", json={**body, "compression_ratio": "auto"})
        assert fake.bodies[-1][1]["vllm_xargs"] == {"compression_ratio": "auto"}
        assert resp.json()["usage"]["breadcrumbs"] == {
            "ratio": "auto", "ratio_path": None, "beacons_inserted": None,
            "peak_kv_entries": None, "kv_entries_saved": None, "measured": False}
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 13, "compression_ratio": "auto"}
        resp = client.post("/v1/chat/completions", json=chat)
        assert resp.json()["usage"]["breadcrumbs"] == {
            "ratio": 2, "ratio_path": [[0, 2]], "beacons_inserted": 5, "peak_kv_entries": 12,
            "kv_entries_saved": 5, "measured": True}
        assert client.get("/get_load").json() == {"load": 42}  # the upstream's own

        fake.healthy = False
        client.portal.call(backend.poll_once)
        assert client.get("/ready").status_code == 503


def test_layer_refuses_bad_ratios_and_caps_before_the_engine(checkpoint):
    fake = FakeVLLM()
    settings = Settings(model=checkpoint, served_model_name="tiny", upstream="http://a:8000",
                        health_interval_s=3600, max_n=2, max_tokens_cap=100, api_keys="k1,k2")
    backend = RemoteBackend(settings, transport=httpx.MockTransport(fake))
    auth = {"Authorization": "Bearer k2"}
    with TestClient(create_app(settings, backend=backend)) as client:
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
        for extra, param in (({"compression_ratio": 3}, "compression_ratio"),
                             ({"vllm_xargs": {"compression_ratio": "7"}}, "compression_ratio"),
                             ({"n": 3}, "n"), ({"max_completion_tokens": 101},
                                                "max_completion_tokens"),
                             ({"compression_ratio": 8, "use_beam_search": True},
                              "use_beam_search")):
            resp = client.post("/v1/chat/completions", json={**chat, **extra}, headers=auth)
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["param"] == param
        refusal = {"type": "message", "role": "assistant", "id": "m1", "status": "completed",
                   "content": [{"type": "refusal", "refusal": "no"}]}
        resp = client.post("/v1/responses", headers=auth, json={
            "model": "tiny", "input": [{"role": "user", "content": "x"}, refusal]})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "input[1].content"
        assert not fake.bodies  # nothing reached the engine
        assert client.post("/v1/chat/completions", json=chat).status_code == 401
        ok = client.post("/v1/chat/completions", json=chat, headers=auth)
        assert ok.status_code == 200
        # No max tokens asked: the gateway's default is applied, under the newer field name.
        assert fake.bodies[-1][1]["max_completion_tokens"] == 100  # the default, under the cap
        assert client.get("/metrics").status_code == 200  # ops routes need no key


def test_bodies_nested_too_deep_and_unknown_roles_get_a_400_before_the_engine(checkpoint):
    """Both were reachable as a new user: 50,000 nested arrays made a 500 (``RecursionError``
    in JSON decoding, on every route), and a role OpenAI does not have was answered with a 200."""
    fake = FakeVLLM()
    settings = Settings(model=checkpoint, served_model_name="tiny", upstream="http://a:8000",
                        health_interval_s=3600)
    backend = RemoteBackend(settings, transport=httpx.MockTransport(fake))
    deep = b"[" * 50_000 + b"]" * 50_000
    with TestClient(create_app(settings, backend=backend)) as client:
        for route in ("/v1/chat/completions", "/v1/completions", "/tokenize"):
            resp = client.post(route, content=deep, headers={"content-type": "application/json"})
            assert resp.status_code == 400, (route, resp.text)
            assert resp.json()["error"] == {"message": "the JSON body nests deeper than 256 levels",
                                            "type": "invalid_request_error", "param": None,
                                            "code": 400}
        messages = [{"role": "user", "content": "x"}, {"role": "wizard", "content": "y"}]
        resp = client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages})
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["param"] == "messages[1].role" and "'wizard'" in error["message"]
        assert not fake.bodies  # nothing reached the engine

        # A body at the bound (two objects around the lists), and every role OpenAI has, pass on.
        nested: list = []
        for _ in range(MAX_JSON_DEPTH - 3):
            nested = [nested]
        roles = [{"role": r, "content": "x"} for r in ("system", "developer", "user", "assistant")]
        body = {"model": "tiny", "messages": roles, "metadata": {"deep": nested}}
        resp = client.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert fake.bodies[-1][1]["metadata"]["deep"] == nested
        resp = client.post("/v1/chat/completions", json={**body, "metadata": {"deep": [nested]}})
        assert resp.status_code == 400


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


def test_vllm_args_keep_the_kv_target_beside_a_users_additional_config(checkpoint):
    from server.engines.embedded import vllm_args
    from server.memory import KVPool

    mine = Settings(model=checkpoint, served_model_name="tiny", kv_target=0.7)
    assert vllm_args(mine, KVPool(1.0, "test"), False, [], cpu=True).additional_config == {
        "breadcrumbs_kv_target": 0.7}
    theirs = Settings(model=checkpoint, served_model_name="tiny", kv_target=0.7, vllm_args=[
        "--additional-config", json.dumps({"breadcrumbs_admission_overcommit": 0})])
    assert vllm_args(theirs, KVPool(1.0, "test"), False, [], cpu=True).additional_config == {
        "breadcrumbs_kv_target": 0.7, "breadcrumbs_admission_overcommit": 0}
