"""The gateway end to end: a real uvicorn server on loopback with one embedded vLLM engine.

Everything here shares one engine (module-scoped); run under ``flock /tmp/bc-cpu.lock``.
Clients are the official ``openai`` package and raw ``httpx`` for the error paths.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from servers import gateway_in_thread

from breadcrumbs_vllm.checkpoint import init_model, save_checkpoint
from breadcrumbs_vllm.spec import BeaconSchedule
from server import Settings, create_app
from server.dependencies import RateLimiter

pytestmark = pytest.mark.vllm

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base_url, app) of a running gateway over a tiny random model; tight caps for the tests."""
    model, tokenizer, bc = init_model(2, 64)
    path = save_checkpoint(model, tokenizer, bc, tmp_path_factory.mktemp("gw") / "tiny")
    settings = Settings(model=path, served_model_name="tiny", kv_cache_gib=1, api_keys=[KEY],
                        max_body_bytes=64 * 1024, max_prompt_tokens=512, max_tokens_cap=256,
                        max_n=3, rate_limit_per_minute=0, max_model_len=1024)
    app = create_app(settings)
    with gateway_in_thread(app) as base:
        yield base, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0)


def scrape(base: str) -> dict[str, float]:
    """``/metrics`` as ``{"name{labels}": value}``."""
    text = httpx.get(f"{base}/metrics").text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if base == name and all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


def expected_breadcrumbs(prompt_len: int, ratio: int | None, generated: int) -> dict:
    fed = generated - 1  # the token that ends a generation is never fed
    s = BeaconSchedule(prompt_len, ratio)
    return {"ratio": ratio, "ratio_path": [[0, ratio]], "beacons_inserted": s.num_beacons_fed(fed),
            "peak_kv_entries": s.peak_kv_entries(fed),
            "kv_entries_saved": prompt_len + fed - s.kv_entries(fed), "measured": True}


# ---------------------------------------------------------------- the OpenAI client, happy paths
def test_models_lists_ratios(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert models[0].model_extra["compression_ratios"] == [2, 4, 8, 16]


def test_chat_with_ratio_reports_breadcrumbs_usage(server, client):
    before = scrape(server[0])
    resp = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Reach 24 with 3 5 8"}],
        max_tokens=40, temperature=0, extra_body={"compression_ratio": 8, "ignore_eos": True})
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 40
    crumbs = resp.usage.model_extra["breadcrumbs"]
    assert crumbs == expected_breadcrumbs(resp.usage.prompt_tokens, 8, 40)
    assert crumbs["kv_entries_saved"] > 0
    after = scrape(server[0])
    assert metric(after, "breadcrumbs_gateway_requests_total", route="/v1/chat/completions",
                  status="200", ratio="8") == metric(
        before, "breadcrumbs_gateway_requests_total", route="/v1/chat/completions",
        status="200", ratio="8") + 1
    for name in ("breadcrumbs_gateway_generation_tokens_total",):
        assert metric(after, name, route="chat") - metric(before, name, route="chat") == 40
    assert (metric(after, "breadcrumbs_gateway_kv_entries_saved_total", ratio="8")
            - metric(before, "breadcrumbs_gateway_kv_entries_saved_total", ratio="8")
            == crumbs["kv_entries_saved"])
    assert (metric(after, "breadcrumbs_gateway_e2e_seconds_count", route="chat")
            == metric(before, "breadcrumbs_gateway_e2e_seconds_count", route="chat") + 1)
    assert metric(after, "vllm:prompt_tokens_total") > 0  # vLLM's own metrics are served too


def test_a_range_reports_the_path_it_ran(client):
    """A range starts at its minimum and may rise to its maximum under KV pressure; the answer
    says which ratios it ran, from which generated token."""
    resp = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=30,
        temperature=0, extra_body={"compression_ratio": {"min": 4, "max": 16},
                                   "ignore_eos": True})
    crumbs = resp.usage.model_extra["breadcrumbs"]
    path = crumbs["ratio_path"]
    assert crumbs["ratio"] == 4 and path[0] == [0, 4] and crumbs["measured"]
    assert [c for _, c in path] == sorted({c for _, c in path}) and path[-1][1] <= 16


def test_plugin_beacon_count_matches_usage(server, client):
    """The plugin's own counter (EngineCore process) agrees with the beacons the request's
    engine report counted."""
    name = "breadcrumbs_beacons_inserted_total"
    before = metric(scrape(server[0]), name, ratio="4")
    resp = client.completions.create(model="tiny", prompt="abc", max_tokens=30, temperature=0,
                                     extra_body={"compression_ratio": 4, "ignore_eos": True})
    time.sleep(1.0)  # stat loggers run after the step that finished the request
    beacons = resp.usage.model_extra["breadcrumbs"]["beacons_inserted"]
    assert beacons > 0
    assert metric(scrape(server[0]), name, ratio="4") - before == beacons


def test_chat_streaming_with_usage_chunk(client):
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=20, stream=True,
        stream_options={"include_usage": True}, extra_body={"compression_ratio": 4})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert usage.model_extra["breadcrumbs"] == expected_breadcrumbs(
        usage.prompt_tokens, 4, usage.completion_tokens)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and len(text) <= usage.completion_tokens


def test_completions_n_seed_stop_and_token_prompt(client):
    kwargs = {"model": "tiny", "max_tokens": 30, "n": 2, "seed": 7, "temperature": 1.0,
              "top_p": 0.9}
    first = client.completions.create(prompt="12+3=", **kwargs)
    again = client.completions.create(prompt="12+3=", **kwargs)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # seeded
    assert sorted(c.index for c in first.choices) == [0, 1]
    ids = client.completions.create(prompt=[40, 41, 42], max_tokens=5, model="tiny")
    assert ids.usage.prompt_tokens == 3 and ids.usage.model_extra["breadcrumbs"]["ratio"] is None
    full = client.completions.create(prompt="abc", max_tokens=60, model="tiny", temperature=0,
                                     extra_body={"ignore_eos": True})
    assert len(full.choices[0].text) >= 4
    stop = full.choices[0].text[2:4]
    cut = client.completions.create(prompt="abc", max_tokens=60, model="tiny", temperature=0,
                                    stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].text and full.choices[0].text.startswith(
        cut.choices[0].text)


def test_completions_streaming_and_auto_ratio(client):
    chunks = list(client.completions.create(
        model="tiny", prompt="hello", max_tokens=12, stream=True,
        stream_options={"include_usage": True}, extra_body={"compression_ratio": "auto"}))
    usage = chunks[-1].usage
    # An idle server is far under the KV target: "auto" picks no compression.
    assert usage.model_extra["breadcrumbs"]["ratio"] is None
    assert "".join(c.choices[0].text for c in chunks if c.choices)


# ---------------------------------------------------------------- error paths
@pytest.mark.parametrize("body, status, param", [
    ({"compression_ratio": 3}, 400, "compression_ratio"),
    ({"compression_ratio": 1}, 400, "compression_ratio"),
    ({"compression_ratio": "8"}, 400, "compression_ratio"),
    ({"compression_ratio": True}, 400, "compression_ratio"),
    ({"vllm_xargs": {"compression_ratio": 5}}, 400, "compression_ratio"),
    ({"compression_ratio": {"min": 16, "max": 4}}, 400, "compression_ratio"),
    ({"compression_ratio": {"min": 4, "max": 32}}, 400, "compression_ratio"),
    ({"vllm_xargs": {"compression_ratio": 8, "compression_ratio_max": 4}}, 400,
     "compression_ratio"),
    ({"max_tokens": 257}, 400, "max_tokens"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"n": 4}, 400, "n"),
    ({"temperature": -1}, 400, "temperature"),
    ({"model": "gpt-4"}, 404, "model"),
    ({"prompt": "x" * 600}, 400, "prompt"),
    ({"prompt": [10**6]}, 400, None),  # vLLM's own check, which names no field
    ({"prompt": "a<beacon>b"}, 400, "prompt"),
    ({"prompt": [40, 4, 41]}, 400, "prompt"),
])
def test_bad_input_gets_openai_error(server, body, status, param):
    payload = {"model": "tiny", "prompt": "hi", "max_tokens": 4, **body}
    resp = httpx.post(f"{server[0]}/v1/completions", json=payload, headers=AUTH)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    if param is not None:
        assert error["param"] is not None and param in error["param"]
    ratio = body.get("compression_ratio", body.get("vllm_xargs", {}).get("compression_ratio"))
    if type(ratio) in (int, dict):
        assert "2, 4, 8, 16" in error["message"]


def test_eager_cpu_engine_runs_in_process_and_leaves_the_environment(server, monkeypatch):
    from vllm import ModelRegistry

    from server.engines.embedded import _cpu_cold_start

    backend = server[1].state.backend
    assert backend.engine.vllm_config.parallel_config.distributed_executor_backend == "uni"
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with _cpu_cold_start(backend.settings.model) as engine_flags:
        assert engine_flags == ["--distributed-executor-backend", "uni"]
        assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    model_class = ModelRegistry.models["Qwen2ForCausalLM"]
    assert not hasattr(model_class, "module_name"), "still inspected in a subprocess"


def test_seeded_compression_is_refused_on_cpu_and_engine_survives(server, client):
    with pytest.raises(openai.BadRequestError, match="seed cannot be combined") as info:
        client.completions.create(model="tiny", prompt="x" * 40, max_tokens=40, seed=3,
                                  extra_body={"compression_ratio": 2, "ignore_eos": True})
    assert info.value.body["param"] == "seed"
    assert httpx.get(f"{server[0]}/ready").status_code == 200


def test_openai_client_sees_unsupported_ratio(client):
    with pytest.raises(openai.BadRequestError, match="supported: 2, 4, 8, 16"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"compression_ratio": 5})


def test_auth_required(server):
    base = server[0]
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        resp = httpx.post(f"{base}/v1/completions", json=body, headers=headers)
        assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(f"{base}/health").status_code == 200  # ops endpoints stay open


def test_body_too_large_and_not_found(server):
    base = server[0]
    resp = httpx.post(f"{base}/v1/completions", headers=AUTH,
                      content=b'{"model": "tiny", "prompt": "' + b"a" * 70_000 + b'"}')
    assert resp.status_code == 413 and resp.json()["error"]["code"] == 413

    def chunked():
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(20):
            yield b"a" * 4096
        yield b'"}'

    resp = httpx.post(f"{base}/v1/completions", headers=AUTH, content=chunked())
    assert resp.status_code == 413
    resp = httpx.get(f"{base}/v1/nothing-here", headers=AUTH)
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found_error"
    resp = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, content=b"{not json")
    assert resp.status_code in (400, 422) and "error" in resp.json()


def test_rate_limit_per_key(server):
    base, app = server
    app.state.rate_limiter = RateLimiter(2)
    try:
        codes = [httpx.get(f"{base}/v1/models", headers=AUTH).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        resp = httpx.get(f"{base}/v1/models", headers=AUTH)
        assert resp.json()["error"]["type"] == "rate_limit_error"
        assert int(resp.headers["Retry-After"]) >= 1
        # another caller (no valid key -> 401 before it counts against anyone's budget)
        assert httpx.get(f"{base}/v1/models").status_code == 401
    finally:
        app.state.rate_limiter = RateLimiter(0)


def test_error_statuses_are_counted(server):
    before = metric(scrape(server[0]), "breadcrumbs_gateway_requests_total", status="401")
    httpx.get(f"{server[0]}/v1/models")
    after = metric(scrape(server[0]), "breadcrumbs_gateway_requests_total", status="401")
    assert after == before + 1


# ---------------------------------------------------------------- disconnect frees KV blocks
def _kv_usage(base: str) -> float:
    return metric(scrape(base), "vllm:kv_cache_usage_perc")


def _probe(base: str) -> None:
    """A 1-token request: its final engine step reports KV usage after all frees."""
    httpx.post(f"{base}/v1/completions", headers=AUTH,
               json={"model": "tiny", "prompt": "a", "max_tokens": 1}).raise_for_status()


def test_client_disconnect_aborts_and_frees_kv_blocks(server):
    base = server[0]
    _probe(base)
    baseline = _kv_usage(base)
    aborted = metric(scrape(base), "breadcrumbs_gateway_aborted_requests_total")
    body = {"model": "tiny", "prompt": "p" * 400, "max_tokens": 256, "stream": True,
            "ignore_eos": True, "compression_ratio": None}
    with httpx.Client(timeout=30) as http, http.stream(
            "POST", f"{base}/v1/completions", json=body, headers=AUTH) as resp:
        lines = resp.iter_lines()
        for _ in range(6):  # a few tokens in: the request holds KV blocks now
            next(line for line in lines if line.startswith("data: "))
        during = _kv_usage(base)
    assert during > baseline  # 400+ prompt tokens hold >= 13 blocks of 32
    deadline = time.monotonic() + 20
    while metric(scrape(base), "breadcrumbs_gateway_aborted_requests_total") < aborted + 1:
        assert time.monotonic() < deadline, "the gateway never aborted the request"
        time.sleep(0.2)
    _probe(base)
    assert _kv_usage(base) == baseline
    assert metric(scrape(base), "vllm:num_requests_running") == 0


# ---------------------------------------------------------------- schemathesis
def _schemathesis() -> str:
    """The ``schemathesis`` command of this environment (a dev dependency: its absence fails)."""
    beside = Path(sys.executable).with_name("schemathesis")  # the venv's, even off PATH
    exe = str(beside) if beside.exists() else shutil.which("schemathesis")
    assert exe, "schemathesis is not installed (pip install -e '.[dev]')"
    return exe


#: The routes the gateway answers requests on (vLLM's schema lists many more it serves too).
SCHEMATHESIS_PATHS = "^/(v1/(chat/completions|completions|responses|models)|tokenize|detokenize)$"


def test_schemathesis_finds_no_5xx_and_no_schema_violation(server, tmp_path):
    base = server[0]
    exe = _schemathesis()
    cmd = [exe, "run", f"{base}/openapi.json", "--url", base,
           "--checks", ("not_a_server_error,status_code_conformance,content_type_conformance,"
                       "response_schema_conformance"),
           "--max-examples", "25", "--header", f"Authorization: Bearer {KEY}",
           "--request-timeout", "30", "--no-color",
           "--max-time", "150", "--seed", "1", "--workers", "1",
           "--include-path-regex", SCHEMATHESIS_PATHS]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240,
                          cwd=tmp_path)  # schemathesis writes a cache folder into its cwd
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


# ---------------------------------------------------------------- load and soak scripts
LOADTESTS = Path(__file__).resolve().parents[1] / "loadtests"


def _script(name: str, base: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOADTESTS / name), "--url", base,
                           "--api-key", KEY, "--max-tokens", "16", *args], check=False,
                          capture_output=True, text=True, timeout=120, cwd=LOADTESTS)


def test_load_script_runs_bounded_against_the_gateway(server):
    done = _script("gateway_load.py", server[0], "--requests", "8", "--concurrency", "2",
                   "--ratios", "none,8,auto")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["requests"] == 8 and summary["statuses"] == {"200": 8}
    assert summary["kv_blocks_saved"] >= 0 and summary["latency_p95_s"] > 0


def test_soak_script_finds_no_leak_and_its_run_plots(server, tmp_path):
    done = _script("gateway_soak.py", server[0], "--seconds", "6", "--round-seconds", "3",
                   "--requests", "6", "--concurrency", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    rounds = [json.loads(line) for line in done.stdout.splitlines()]
    assert rounds and all(all(r["checks"].values()) for r in rounds)
    (tmp_path / "soak.jsonl").write_text(done.stdout)
    plotted = subprocess.run([sys.executable, str(LOADTESTS / "plot_soak.py"),
                              str(tmp_path / "soak.jsonl"), "--out", str(tmp_path / "soak.png")],
                             check=False, capture_output=True, text=True, timeout=120)
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
