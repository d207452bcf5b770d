"""A real Prometheus scrapes a real gateway: the dashboard, the alerts, the soak, a dead engine.

The module runs twice, once per deployment, each over a tiny random model on a KV pool of
``POOL_BLOCKS`` blocks, small enough that the load preempts:

- embedded: ``breadcrumbs serve`` in a subprocess (so that its exit status is seen), whose
  ``/metrics`` carries the gateway's, vLLM's and the plugin's series;
- remote: ``breadcrumbs serve --upstream`` in front of ``vllm serve`` with the plugin; vLLM's and
  the plugin's series are on the vLLM server's own ``/metrics``, which Prometheus scrapes as the
  ``breadcrumbs-vllm`` job that the shipped config documents for remote mode.

One Prometheus (Debian's package, which ``.ci/run`` installs) on loopback with the shipped
``deploy/prometheus`` config, rewritten only for the target addresses and a 1 s interval. The
short soak is the mixed load (ratios none/4/8/auto, streaming and not, 20% aborted mid-stream);
then every PromQL expression of the shipped dashboard must return data, the key series must
have moved, the alerts must be loaded and quiet; last (embedded only: in remote mode the engine
is not the gateway's), the engine core is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from servers import free_port, stop, wait_until_up

from breadcrumbs_vllm.checkpoint import init_model, save_checkpoint
from server.engines.watchdog import ENGINE_DEAD_EXIT_CODE

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
POOL_BLOCKS = 10
SOAK = ["--requests", "160", "--seconds", "300", "--round-seconds", "40", "--concurrency", "8",
        "--ratios", "none,4,8,auto", "--abort-fraction", "0.2", "--max-tokens", "96",
        "--ignore-eos"]


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


@dataclass
class Deployment:
    mode: str  # "embedded" or "remote"
    base: str  # the gateway
    proc: subprocess.Popen  # the gateway's process
    log: Path
    engine: str  # where vLLM's /metrics is: the gateway itself, or the vLLM server


@pytest.fixture(scope="module", params=["embedded", "remote"])
def gateway(request, tmp_path_factory):
    """The gateway (and in remote mode its vLLM server) with a pool of ``POOL_BLOCKS`` blocks."""
    tmp = tmp_path_factory.mktemp(f"prom-{request.param}")
    model, tokenizer, bc = init_model(2, 64)
    path = save_checkpoint(model, tokenizer, bc, tmp / "tiny")
    env = {**os.environ, "BREADCRUMBS_MAX_MODEL_LEN": "256",
           "BREADCRUMBS_RATE_LIMIT_PER_MINUTE": "0",
           "BREADCRUMBS_VLLM_ARGS": f"--num-gpu-blocks-override {POOL_BLOCKS}"}
    serve = [sys.executable, "-m", "breadcrumbs_vllm.cli", "serve", "--model", str(path),
             "--port", str(free_port())]
    upstream = None
    if request.param == "remote":
        port = free_port()
        upstream = _start([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
                           str(path), "--served-model-name", "tiny", "--host", "127.0.0.1",
                           "--port", str(port), "--dtype", "float32", "--block-size", "32",
                           "--max-model-len", "256", "--enforce-eager",
                           "--num-gpu-blocks-override", str(POOL_BLOCKS)], tmp / "vllm.log",
                          {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
                           "VLLM_PLUGINS": "breadcrumbs"})
        engine = f"http://127.0.0.1:{port}"
        wait_until_up(f"{engine}/health", upstream, tmp / "vllm.log", 240)
        serve += ["--upstream", engine]
    else:
        serve += ["--kv-cache-gib", "1"]
    log = tmp / "gateway.log"
    proc = _start(serve, log, env)
    base = f"http://127.0.0.1:{serve[serve.index('--port') + 1]}"
    wait_until_up(f"{base}/ready", proc, log, 240)
    yield Deployment(request.param, base, proc, log, engine if upstream else base)
    for process in (proc, upstream):
        if process is not None and process.poll() is None:
            stop(process)


@pytest.fixture(scope="module")
def prometheus(gateway, tmp_path_factory):
    """Base URL of a Prometheus scraping the gateway with the shipped config and rules."""
    binary = shutil.which("prometheus")
    assert binary, ("prometheus not found: install Debian's prometheus package "
                    "(apt-get install -y prometheus), as .ci/run does")
    tmp = tmp_path_factory.mktemp("prom")
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [gateway.base.split("//")[1]]
    if gateway.mode == "remote":  # the job deploy/prometheus/prometheus.yml documents for it
        config["scrape_configs"].append({"job_name": "breadcrumbs-vllm", "static_configs": [
            {"targets": [gateway.engine.split("//")[1]]}]})
    for rules in config["rule_files"]:
        shutil.copy(DEPLOY / "prometheus" / rules, tmp / rules)
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "prometheus.log"
    proc = _start([binary, f"--config.file={tmp / 'prometheus.yml'}",
                   f"--storage.tsdb.path={tmp / 'data'}",
                   f"--web.listen-address=127.0.0.1:{port}"], log)
    base = f"http://127.0.0.1:{port}"
    wait_until_up(f"{base}/-/ready", proc, log, 60)
    yield base
    stop(proc)


def query(prom: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=30).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def value(prom: str, expr: str) -> float:
    """The single value of a scalar-like query (0 when it returns nothing)."""
    result = query(prom, expr)
    return sum(float(r["value"][1]) for r in result)


@pytest.fixture(scope="module")
def soak(gateway, prometheus):
    """The soak's short form is the mixed load; its JSON lines (rounds, then the summary)."""
    done = subprocess.run([sys.executable, str(ROOT / "loadtests/gateway_soak.py"), "--url",
                           gateway.base, "--engine-url", gateway.engine, *SOAK],
                          check=False, capture_output=True, text=True,
                          timeout=400, cwd=ROOT / "loadtests")
    assert done.stdout, done.stderr[-3000:]
    time.sleep(3)  # two scrapes after the drain probe
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def test_soak_short_form_leaks_nothing(soak):
    code, lines = soak
    rounds, summary = lines[:-1], lines[-1]
    assert code == 0, lines
    print(json.dumps(lines))  # the figures, in the test log
    assert rounds and all(all(r["checks"].values()) for r in rounds), rounds
    assert summary["requests"] == 160 and summary["failed_5xx"] == 0
    assert 28 <= summary["aborted_mid_stream"] <= 36  # 20% of 160, counted per round
    held = summary["after_drain"]
    assert held["in_flight"] == held["vllm_kv_usage"] == held["plugin_blocks_held"] == 0
    assert summary["preemptions"] > 0, "the pool was meant to be small enough to preempt"
    assert summary["kv_blocks_saved"] > 0


def test_every_dashboard_expression_returns_data(soak, prometheus):
    dashboard = json.loads((DEPLOY / "grafana/dashboards/breadcrumbs.json").read_text())
    exprs = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    empty = [(title, expr) for title, expr in exprs if not query(prometheus, expr)]
    assert not empty, f"dashboard queries with no data: {empty}"


def test_key_series_moved_with_the_load(soak, prometheus):
    window = "[10m]"
    for counter in ("breadcrumbs_beacons_inserted_total", "breadcrumbs_kv_blocks_freed_total",
                    "breadcrumbs_gateway_kv_blocks_saved_total",
                    "breadcrumbs_gateway_beacons_inserted_total",
                    "breadcrumbs_gateway_aborted_requests_total", "vllm:num_preemptions_total"):
        assert value(prometheus, f"sum(increase({counter}{window}))") > 0, counter
    ratios = {r["metric"]["ratio"] for r in query(
        prometheus, f"sum by (ratio) (increase(breadcrumbs_beacons_inserted_total{window})) > 0")}
    assert {"4", "8"} <= ratios
    served = {r["metric"]["ratio"] for r in query(
        prometheus, f'sum by (ratio) (increase(breadcrumbs_gateway_requests_total{{status="200"}}'
                    f'{window})) > 0')}
    assert {"none", "4", "8"} <= served
    # KV in use: vLLM's pool filled up, and compressed requests held fewer blocks than the same
    # requests would have uncompressed; once drained, nothing is held.
    assert value(prometheus, f"max_over_time(vllm:kv_cache_usage_perc{window})") > 0.5
    held = value(prometheus, "max_over_time(sum(breadcrumbs_kv_blocks_held)[10m:1s])")
    saved = value(prometheus, "max_over_time(sum(breadcrumbs_kv_blocks_saved)[10m:1s])")
    assert held > 0 and saved > 0
    assert value(prometheus, "sum(breadcrumbs_kv_blocks_held)") == 0
    assert value(prometheus, "max(vllm:kv_cache_usage_perc)") == 0


def test_alert_rules_are_loaded_and_quiet_after_the_soak(soak, prometheus):
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=30).json()["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    shipped = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    assert set(rules) == {r["alert"] for g in shipped["groups"] for r in g["rules"]}
    assert "BreadcrumbsPreemptingAtMaxRatio" in rules
    assert all(r["health"] == "ok" for r in rules.values()), rules
    # The leak rule's condition (before its `for:`) finds nothing on a drained gateway.
    assert not query(prometheus, rules["BreadcrumbsKVBlocksLeaked"]["query"])


def test_ranges_rise_under_pressure_and_say_which_path_they_ran(gateway, soak, prometheus):
    """Six ranged requests at once on the small pool: admitted for the room they would need at
    16, their projected peaks at ratio 2 pass the pool, so the engine raises some of them. Each
    answer, through the ``openai`` client, names the path it ran: from token 0, at the range's
    minimum or above (a request can rise before its first token), only rising, within the
    range; Prometheus counts the rises.
    (150 tokens: beacons count against the 256-token model length, and at ratio 2 throughout a
    request holds prompt + 150 + 75 tokens.)"""
    import openai

    client = openai.OpenAI(base_url=f"{gateway.base}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    counter = "sum(breadcrumbs_ratio_escalations_total)"
    before = value(prometheus, counter)

    def ask(_: int) -> list[list[int]]:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "count"}], max_tokens=150,
            temperature=0, extra_body={"compression_ratio": {"min": 2, "max": 16},
                                       "ignore_eos": True})
        crumbs = reply.usage.model_extra["breadcrumbs"]
        assert crumbs["ratio"] == 2 and reply.usage.completion_tokens == 150, crumbs
        return crumbs["ratio_path"]

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        paths = list(pool.map(ask, range(6)))
    for path in paths:
        starts, ratios = [t for t, _ in path], [c for _, c in path]
        assert starts[0] == 0 and starts == sorted(set(starts)), paths
        assert ratios == sorted(set(ratios)) and 2 <= ratios[0] and ratios[-1] <= 16, paths
    assert any(len(path) > 1 or path[0][1] > 2 for path in paths), paths
    # A path starts above 2 where its request rose before its first token, and two rises with
    # no token between them show as one step, so the counter moves at least as far as this.
    rises = sum(len(path) - 1 + (path[0][1] > 2) for path in paths)
    deadline = time.monotonic() + 15
    while value(prometheus, counter) < before + rises:
        assert time.monotonic() < deadline, (value(prometheus, counter), before, paths)
        time.sleep(0.5)


def test_dashboard_plot_from_prometheus(gateway, soak, prometheus, tmp_path):
    """``deploy/grafana/plot_dashboard.py`` draws every panel from this Prometheus. With
    ``BREADCRUMBS_DASHBOARD_PNG`` set, the embedded run's picture goes there
    (docs/results/dashboard.png was made this way)."""
    if gateway.mode == "remote":
        pytest.skip("drawn from the embedded deployment")
    out = Path(os.environ.get("BREADCRUMBS_DASHBOARD_PNG") or tmp_path / "dashboard.png")
    title = (f"breadcrumbs gateway, soak short form (tiny random model, {POOL_BLOCKS}-block "
             "KV pool), plotted from Prometheus")
    done = subprocess.run([sys.executable, str(DEPLOY / "grafana/plot_dashboard.py"),
                           "--prometheus", prometheus, "--minutes", "6", "--out", str(out),
                           "--title", title], check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def _engine_core(gateway_pid: int) -> psutil.Process:
    children = psutil.Process(gateway_pid).children(recursive=True)
    cores = [c for c in children if "EngineCore" in " ".join([c.name(), *c.cmdline()])]
    assert cores, [(c.pid, c.name(), c.cmdline()) for c in children]
    return cores[0]


def test_dead_engine_fails_requests_and_exits_for_the_supervisor(gateway, prometheus, soak):
    """Last in the module: it kills the gateway's engine."""
    if gateway.mode == "remote":
        pytest.skip("in remote mode the engine is the vLLM server's, not the gateway's")
    base, proc, log = gateway.base, gateway.proc, gateway.log
    model = httpx.get(f"{base}/v1/models").json()["data"][0]["id"]
    body = {"model": model, "prompt": "1+1=", "max_tokens": 240, "ignore_eos": True,
            "compression_ratio": 4}
    answers: dict[str, object] = {}
    streaming = threading.Event()

    def stream() -> None:
        events = answers["stream"] = []
        with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True},
                          timeout=60) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    streaming.set()

    def whole() -> None:
        resp = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
        answers["whole"] = (resp.status_code, resp.json())

    threads = [threading.Thread(target=stream), threading.Thread(target=whole)]
    for t in threads:
        t.start()
    assert streaming.wait(30)
    _engine_core(proc.pid).kill()
    killed = time.monotonic()
    while httpx.get(f"{base}/ready", timeout=5).status_code != 503:
        assert time.monotonic() - killed < 5, "/ready still answers 200 after the engine died"
        time.sleep(0.05)
    not_ready_after = time.monotonic() - killed
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "an in-flight request hung after the engine died"
    status, error = answers["whole"]
    assert status >= 500 and isinstance(error["error"]["message"], str), answers["whole"]
    last = answers["stream"][-1] if answers["stream"][-1] != "[DONE]" else answers["stream"][-2]
    assert "error" in json.loads(last), answers["stream"][-3:]
    assert proc.wait(timeout=30) == ENGINE_DEAD_EXIT_CODE, log.read_text()[-3000:]
    assert not_ready_after < 2
    # Prometheus sees the gateway go: the engine-not-ready alert's condition holds.
    deadline = time.monotonic() + 15
    rule = 'up{job=~"breadcrumbs-.*"} == 0'
    while not query(prometheus, rule):
        assert time.monotonic() < deadline, "Prometheus never saw the gateway down"
        time.sleep(0.5)

