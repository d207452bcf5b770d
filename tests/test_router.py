"""``breadcrumbs router``: two vLLM replicas with the plugin behind the vLLM Router, on loopback.

One launcher for the module, started exactly as the README documents it (the venv's
``breadcrumbs`` console script), with a small KV pool so that a few long requests fill a replica.
Requests go through the router; the replicas' own ``/metrics`` and ``/get_load`` are read
directly to see where each request landed and what it left behind.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from servers import free_port, stop

pytestmark = pytest.mark.vllm

MODEL = "countdown-student"
MESSAGES = [{"role": "user", "content": "Use 3 5 8 to make 24."}]
SUCCESS = "vllm:request_success_total"
RATIOS = (None, 2, 4, 8, 16)


@dataclass
class Cluster:
    router: str
    replicas: list[str]
    groups: list[int]  # the replicas' process groups (their pids)


def _free_run(n: int) -> int:
    """A port whose next ``n - 1`` ports are free too (router, replicas, router metrics)."""
    for _ in range(50):
        port = free_port()
        try:
            for p in range(port, port + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise AssertionError("no run of free loopback ports")


def _group_alive(pgid: int) -> bool:
    """A live process (not a zombie waiting for init to reap it) in process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, _, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(group) == pgid and state != "Z":
                return True
    return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("router")
    port = _free_run(4)
    cmd = [str(Path(sys.executable).with_name("breadcrumbs")), "router", "-n", "2",
           "--port", str(port), "--kv-cache-gib", "0.02", "--poll-interval", "1",
           "--log-dir", str(log_dir), "--", "--max-model-len", "4096"]
    out = log_dir / "launcher.out"
    proc = subprocess.Popen(cmd, stdout=out.open("w"), stderr=subprocess.STDOUT)
    groups: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while "router: " not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(1)
        text = out.read_text()
        replicas = re.findall(r"^replica \d+: (\S+)", text, re.MULTILINE)
        groups = [int(g) for g in re.findall(r"^replica \d+: .*pid (\d+)", text, re.MULTILINE)]
        router = re.search(r"^router: (\S+)/v1", text, re.MULTILINE).group(1)
        assert len(replicas) == 2 and len(groups) == 2, text
        yield Cluster(router, replicas, groups)
    finally:
        stop(proc)
        # No orphans: nothing is left in the replicas' process groups (engine cores included).
        assert _eventually(lambda: not any(_group_alive(g) for g in groups), 10), \
            out.read_text()


# ---------------------------------------------------------------- helpers
def _chat(base: str, xargs: dict | None = None, **body) -> httpx.Response:
    payload = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "temperature": 0,
               **body}
    if xargs is not None:
        payload["vllm_xargs"] = xargs
    return httpx.post(f"{base}/v1/chat/completions", json=payload, timeout=120)


def _total(base: str, name: str, keep: Callable[[dict], bool] = lambda labels: True) -> float:
    """Sum of the ``/metrics`` series ``name`` whose labels ``keep`` accepts."""
    total = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.startswith(name + "{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', series))
            if keep(labels):
                total += float(value)
    return total


def _served(base: str) -> float:
    """Requests this replica finished, aborts left out."""
    return _total(base, SUCCESS, lambda labels: labels.get("finished_reason") != "abort")


def _probe(base: str) -> None:
    """A 1-token request: its engine step publishes the KV state after every free before it."""
    httpx.post(f"{base}/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 1},
               timeout=60).raise_for_status()


def _eventually(check: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True


# ---------------------------------------------------------------- tests
def test_compressed_and_auto_requests_pass_through(cluster):
    fixed = _chat(cluster.router, {"compression_ratio": 8}, ignore_eos=True, max_tokens=24)
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["usage"]["completion_tokens"] == 24
    auto = _chat(cluster.router, {"compression_ratio": "auto"})
    assert auto.status_code == 200, auto.text
    assert auto.json()["kv_transfer_params"]["breadcrumbs"]["ratio"] in RATIOS, auto.text


def test_both_replicas_serve_and_beacons_are_counted(cluster):
    before = [_served(r) for r in cluster.replicas]
    beacons = sum(_total(r, "breadcrumbs_beacons_inserted_total") for r in cluster.replicas)

    def moved() -> list[float]:
        return [_served(r) - b for r, b in zip(cluster.replicas, before, strict=True)]

    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):  # a batch at once: the router's in-flight count spreads it
            replies = list(pool.map(
                lambda _: _chat(cluster.router, {"compression_ratio": 8}, ignore_eos=True,
                                max_tokens=32), range(4)))
            assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
            if _eventually(lambda: all(m > 0 for m in moved()), timeout=5):
                break
    assert all(m > 0 for m in moved()), moved()
    assert sum(_total(r, "breadcrumbs_beacons_inserted_total")
               for r in cluster.replicas) > beacons


def test_get_load_and_engine_labels(cluster):
    for replica in cluster.replicas:
        load = httpx.get(f"{replica}/get_load", timeout=30).json()
        assert list(load) == ["load"] and isinstance(load["load"], int), load
        page = httpx.get(f"{replica}/metrics", timeout=30).text
        plugin = [ln for ln in page.splitlines() if ln.startswith("breadcrumbs_")]
        names = {ln.split("{")[0] for ln in plugin}
        assert {"breadcrumbs_kv_cache_usage_projected_perc",
                "breadcrumbs_kv_blocks_held"} <= names, names
        assert all('engine="0"' in ln for ln in plugin), plugin


def test_a_loaded_replica_gets_none_of_the_next_requests(cluster):
    """Long requests sent to A directly (not through the router) fill its small pool, so its
    /get_load is high; once the router has polled, every short request goes to B."""
    a, b = cluster.replicas
    stop_loading = threading.Event()
    finished: list[bool] = []

    def load_a() -> None:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4000, "ignore_eos": True,
                "stream": True}
        with httpx.stream("POST", f"{a}/v1/chat/completions", json=body, timeout=120) as resp:
            for _ in resp.iter_lines():
                if stop_loading.is_set():
                    return  # leaving the block closes the stream: vLLM aborts the request
        finished.append(True)

    loaders = [threading.Thread(target=load_a) for _ in range(3)]
    served_a, served_b = _served(a), _served(b)
    for t in loaders:
        t.start()
    try:
        assert _eventually(lambda: httpx.get(f"{a}/get_load").json()["load"] > 100, 30)
        time.sleep(3)  # the router polls /get_load every second
        k = 5
        for _ in range(k):
            reply = _chat(cluster.router, max_tokens=8)
            assert reply.status_code == 200, reply.text
        assert _eventually(lambda: _served(b) - served_b >= k)
        assert not finished, "a loading request finished early; make them longer"
        assert _served(b) - served_b == k
        assert _served(a) - served_a == 0
    finally:
        stop_loading.set()
        for t in loaders:
            t.join(timeout=60)
    _probe(a)
    assert _eventually(lambda: _total(a, "vllm:num_requests_running") == 0)


def test_unsupported_ratio_is_a_400(cluster):
    reply = _chat(cluster.router, {"compression_ratio": 3})
    assert reply.status_code == 400, reply.text
    assert "compression ratio 3" in reply.json()["error"]["message"]


def test_a_client_that_leaves_mid_stream_frees_its_blocks(cluster):
    def state(replica: str) -> tuple[float, float, float]:
        return (_total(replica, "vllm:kv_cache_usage_perc"),
                _total(replica, "breadcrumbs_kv_blocks_held"),
                _total(replica, "vllm:num_requests_running"))

    for replica in cluster.replicas:
        _probe(replica)
    baseline = {r: state(r)[0] for r in cluster.replicas}
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 3000, "ignore_eos": True,
            "stream": True, "vllm_xargs": {"compression_ratio": 8}}
    with httpx.stream("POST", f"{cluster.router}/v1/chat/completions", json=body,
                      timeout=120) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        for _ in range(100):
            next(lines)
        live = [state(r) for r in cluster.replicas]
        assert sum(s[2] for s in live) == 1 and sum(s[1] for s in live) > 0, live
    # The router drops its upstream stream, vLLM aborts the request and frees its blocks.

    def freed() -> bool:
        for replica in cluster.replicas:
            _probe(replica)
        return all(state(r) == (baseline[r], 0.0, 0.0) for r in cluster.replicas)

    assert _eventually(freed), {r: state(r) for r in cluster.replicas}


def test_llm_d_metrics_contract(cluster):
    from llm_d_contract import assert_llm_d_metrics_contract

    page = httpx.get(f"{cluster.replicas[0]}/metrics", timeout=30).text
    assert_llm_d_metrics_contract(page, engines=1)
