"""The deployment files parse, wire up to each other, and chart only metrics that exist; the
alert rules pass promtool; a dead engine ends the gateway with the status supervisors restart on."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import server.metrics  # noqa: F401 -- registers the gateway metrics
from server.engines.watchdog import ENGINE_DEAD_EXIT_CODE, EngineWatchdog

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _gateway_sample_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_count", "_sum"))
    return names


def _plugin_sample_names() -> set[str]:
    """The engine-side metrics the plugin's stat logger exports (``breadcrumbs_*``)."""
    from prometheus_client.metrics import MetricWrapperBase

    from breadcrumbs_vllm.vllm_plugin.metrics import PrometheusCompressionMetrics

    metrics = PrometheusCompressionMetrics.get()
    families = [*metrics.counters.values(),
                *(m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase))]
    return {f"{m._name}_total" if m._type == "counter" else m._name for m in families}


def test_dashboard_queries_use_existing_metrics():
    dashboard = json.loads((DEPLOY / "grafana/dashboards/breadcrumbs.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    titles = " ".join(p["title"] for p in dashboard["panels"])
    for needed in ("KV cache usage", "blocks saved", "latency"):
        assert needed in titles
    known = _gateway_sample_names()
    used = {m for e in exprs for m in re.findall(r"breadcrumbs_gateway_\w+", e)}
    assert used and used <= known, used - known
    engine = {m for e in exprs for m in re.findall(r"breadcrumbs_(?!gateway_)\w+", e)}
    assert {"breadcrumbs_kv_blocks_saved", "breadcrumbs_kv_blocks_held"} <= engine
    assert engine <= _plugin_sample_names(), engine - _plugin_sample_names()
    assert all(p["datasource"]["uid"] == "prometheus" for p in dashboard["panels"])


def test_compose_prometheus_and_grafana_are_wired():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"gateway", "prometheus", "grafana"} <= set(compose["services"])
    # The gateway exits non-zero when its engine dies; compose must start it again.
    assert compose["services"]["gateway"]["restart"] in ("unless-stopped", "always", "on-failure")
    assert all(port.startswith("127.0.0.1:") for svc in compose["services"].values()
               for port in svc.get("ports", []))
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["gateway:8000"]
    source = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["uid"] == "prometheus"
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(m.endswith(":" + provider["providers"][0]["options"]["path"] + ":ro")
               for m in mounts)


def test_k8s_probes_hit_real_endpoints():
    docs = list(yaml.safe_load_all((DEPLOY / "k8s/gateway.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["readinessProbe"]["failureThreshold"] == 1  # a dead engine: out at once
    assert deployment["spec"]["template"]["spec"].get("restartPolicy", "Always") == "Always"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    env = {e["name"] for e in container["env"]}
    assert {"BREADCRUMBS_HOST", "BREADCRUMBS_API_KEYS"} <= env


def test_helm_templates_only_use_defined_values():
    chart = DEPLOY / "helm/breadcrumbs"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    assert yaml.safe_load((chart / "Chart.yaml").read_text())["name"] == "breadcrumbs"
    used = {m for t in (chart / "templates").glob("*.yaml")
            for m in re.findall(r"\.Values\.([\w.]+)", t.read_text())}
    assert {"image.repository", "upstream", "apiKeysSecret"} <= used
    for path in used:
        node = values
        for key in path.split("."):
            assert isinstance(node, dict) and key in node, f".Values.{path} is not in values.yaml"
            node = node[key]


def _promtool() -> str:
    """Debian's ``prometheus`` package ships it; ``.ci/run`` installs that package."""
    path = shutil.which("promtool")
    assert path, ("promtool not found: install Debian's prometheus package "
                  "(apt-get install -y prometheus), as .ci/run does")
    return path


def _promtool_ok(*args: str) -> str:
    done = subprocess.run([_promtool(), *args], check=False, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_prometheus_config_and_alert_rules_pass_promtool():
    prom_dir = DEPLOY / "prometheus"
    out = _promtool_ok("check", "config", str(prom_dir / "prometheus.yml"))
    assert "5 rules found" in out
    _promtool_ok("test", "rules", str(prom_dir / "alerts_test.yml"))
    alerts = yaml.safe_load((prom_dir / "alerts.yml").read_text())
    names = {r["alert"] for g in alerts["groups"] for r in g["rules"]}
    assert names == {"BreadcrumbsKVPoolNearFull", "BreadcrumbsPreemptionsRising",
                     "BreadcrumbsEngineNotReady", "BreadcrumbsKVBlocksLeaked",
                     "BreadcrumbsPreemptingAtMaxRatio"}
    tested = yaml.safe_load((prom_dir / "alerts_test.yml").read_text())
    assert names == {t["alertname"] for case in tested["tests"]
                     for t in case["alert_rule_test"]}
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


class _Engine:
    errored = False


def _watch(engine: _Engine, stop_first: bool) -> list[int]:
    exits: list[int] = []

    async def scenario() -> None:
        dog = EngineWatchdog(engine, grace_s=0.05, poll_s=0.01, exit=exits.append)
        dog.start()
        await asyncio.sleep(0.05)
        if stop_first:
            dog.stop()  # a deliberate shutdown makes the engine errored too: no exit then
        engine.errored = True
        await asyncio.sleep(0.2)
        dog.stop()

    asyncio.run(scenario())
    return exits


def test_engine_death_exits_with_the_status_supervisors_restart_on():
    assert _watch(_Engine(), stop_first=False) == [ENGINE_DEAD_EXIT_CODE] != [0]
    assert _watch(_Engine(), stop_first=True) == []
