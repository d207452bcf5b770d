"""The llm-d files in deploy/llm-d/ use only what llm-d documents, point the endpoint picker's KV
usage at the plugin's projected gauge, and name metrics this project serves; the /metrics
contract check (tests/llm_d_contract.py) accepts a good page and rejects broken ones.

llm-d is contract-tested, not run: its endpoint picker is a Go (>= 1.26) binary behind Envoy and
neither installs on this machine. The EPP decodes its config strictly (an unknown key or plugin
parameter fails its start: ``pkg/epp/config/loader/configloader.go``, ``decodeRawConfig`` with
``serializer.EnableStrict``, ``fwkplugin.StrictDecoder``), so the tables below are what a config
of ours may use. Read in llm-d/llm-d-router at commit ebab687 (2026-08-22) and
kubernetes-sigs/gateway-api-inference-extension v1.5.0 / 84436a9; each entry names its file.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from llm_d_contract import assert_llm_d_metrics_contract
from prometheus_client import CollectorRegistry, generate_latest

from breadcrumbs_vllm.vllm_plugin.load import PROJECTED

LLM_D = Path(__file__).resolve().parents[1] / "deploy" / "llm-d"
CONFIGS = ("epp-config.yaml", "epp-config-no-k8s.yaml")
ENGINE = "breadcrumbs-vllm"  # our engine type, the value of the llm-d.ai/engine-type label

# --- What llm-d documents (llm-d/llm-d-router unless said otherwise) ----------------------------

#: EndpointPickerConfig: apix/config/v1alpha1/endpointpickerconfig_types.go (json tags) and
#: zz_generated.register.go (group llm-d.ai, version v1alpha1).
API_VERSION = "llm-d.ai/v1alpha1"
CONFIG_KEYS = {"apiVersion", "kind", "featureGates", "plugins", "schedulingProfiles", "dataLayer",
               "flowControl", "requestHandler", "saturationDetector", "parser"}
PLUGIN_SPEC_KEYS = {"name", "type", "parameters"}  # PluginSpec
PROFILE_KEYS = {"name", "plugins"}  # SchedulingProfile
PROFILE_PLUGIN_KEYS = {"pluginRef", "weight"}  # SchedulingPlugin
DATA_LAYER_KEYS = {"injectDefaults", "sources", "discovery", "peerDiscovery",
                   "crossReplicaSyncerPluginRef", "crossReplicaSyncInterval"}  # DataLayerConfig
SOURCE_KEYS = {"pluginRef", "extractors"}  # DataLayerSource
EXTRACTOR_KEYS = {"pluginRef"}  # DataLayerExtractor
DISCOVERY_KEYS = {"pluginRef"}  # DiscoveryConfig

#: Plugin type -> (stability, parameter names). Stability from cmd/epp/runner/runner.go's
#: registrations (Alpha plugins need --allow-experimental-plugins, which we do not ask for).
PLUGINS: dict[str, tuple[str, set[str]]] = {
    # pkg/epp/framework/plugins/scheduling/scorer/queuedepth/README.md: no parameters
    "queue-scorer": ("beta", set()),
    # pkg/epp/framework/plugins/scheduling/scorer/kvcacheutilization/README.md: no parameters
    "kv-cache-utilization-scorer": ("beta", set()),
    # pkg/epp/framework/plugins/scheduling/scorer/prefix/README.md and plugin.go (json tags)
    "prefix-cache-scorer": ("beta", {"matchLengthWeight", "matchLengthScaleTokens",
                                     "prefixMatchInfoProducerName"}),
    # pkg/epp/framework/plugins/scheduling/scorer/nohitlru/README.md
    "no-hit-lru-scorer": ("beta", {"prefixPluginType", "prefixPluginName", "lruSize"}),
    # pkg/epp/framework/plugins/scheduling/picker/maxscore/README.md
    "max-score-picker": ("beta", {"maxNumOfEndpoints"}),
    # pkg/epp/framework/plugins/scheduling/profilehandler/single/README.md: no parameters
    "single-profile-handler": ("beta", set()),
    # pkg/epp/framework/plugins/datalayer/source/metrics/README.md and datasource.go (json tags)
    "metrics-data-source": ("beta", {"scheme", "path", "port", "insecureSkipVerify",
                                     "caCertPath", "clientCertPath", "clientKeyPath",
                                     "interval"}),
    # pkg/epp/framework/plugins/datalayer/extractor/metrics/README.md and factories.go
    # (modelServerExtractorParams)
    "core-metrics-extractor": ("beta", {"engineLabelKey", "defaultEngine", "engineConfigs"}),
    # pkg/epp/framework/plugins/datalayer/discovery/file/README.md and plugin.go (params);
    # docs/discovery.md
    "file-discovery": ("beta", {"path", "watchFile"}),
}
#: core-metrics-extractor's engineConfigs[] and customMetrics[] keys: factories.go
#: (engineConfigParams, customMetricConfigParams).
ENGINE_CONFIG_KEYS = {"name", "queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec",
                      "loraSpec", "cacheInfoSpec", "cacheBlockSizeLabelName",
                      "cacheNumBlocksLabelName", "cacheBlockSizeSpec", "cacheNumBlocksSpec",
                      "customMetrics"}
CUSTOM_METRIC_KEYS = {"attributeKey", "metricSpec"}
#: The built-in `vllm` engine config: factories.go (defaultEngineConfigs); the label key:
#: mapping_registry.go (DefaultEngineTypeLabelKey).
VLLM_ENGINE = {"queuedRequestsSpec": "vllm:num_requests_waiting",
               "runningRequestsSpec": "vllm:num_requests_running",
               "kvUsageSpec": "vllm:kv_cache_usage_perc",
               "loraSpec": "vllm:lora_requests_info",
               "cacheInfoSpec": "vllm:cache_config_info"}
ENGINE_LABEL_KEY = "llm-d.ai/engine-type"
#: llm-d's default scheduling profile: pkg/epp/config/loader/defaults.go (loadDefaultConfig)
#: and config/charts/routerlib/templates/_config.yaml (default-plugins.yaml).
DEFAULT_WEIGHTS = {"queue-scorer": 2, "kv-cache-utilization-scorer": 2, "prefix-cache-scorer": 3}

#: file-discovery's endpoints file: discovery/file/plugin.go (EndpointsFile, EndpointEntry).
ENDPOINT_KEYS = {"name", "namespace", "address", "port", "labels"}

#: InferencePool: kubernetes-sigs/gateway-api-inference-extension api/v1/inferencepool_types.go
#: (json tags) and zz_generated.register.go (group inference.networking.k8s.io).
POOL_API_VERSION = "inference.networking.k8s.io/v1"
POOL_SPEC_KEYS = {"selector", "targetPorts", "appProtocol", "endpointPickerRef"}
PICKER_REF_KEYS = {"group", "kind", "name", "port", "failureMode"}
FAILURE_MODES = {"FailOpen", "FailClose"}
#: llm-d-router config/charts/routerlib: the EPP Service is "<release>-epp" (_helpers.tpl,
#: llm-d-router.name) and serves ext_proc on 9002 (values.yaml, epp.extProcPort).
EPP_EXT_PROC_PORT = 9002


def _load(name: str) -> Any:
    return yaml.safe_load((LLM_D / name).read_text())


def _engine_configs(config: dict) -> dict[str, dict]:
    extractor = next(p for p in config["plugins"] if p["type"] == "core-metrics-extractor")
    return {e["name"]: e for e in extractor["parameters"]["engineConfigs"]}


def _our_engine(config: dict) -> dict:
    return _engine_configs(config)[ENGINE]


def _metric_names(engine: dict) -> set[str]:
    """The metric names an engine config's spec strings select (``name{label=value}`` form)."""
    specs = [v for k, v in engine.items() if k.endswith("Spec")]
    specs += [c["metricSpec"] for c in engine.get("customMetrics", [])]
    return {re.match(r"\s*([^{\s]+)", s).group(1) for s in specs if s}


@pytest.mark.parametrize("name", CONFIGS)
def test_epp_config_uses_only_what_llm_d_documents(name: str) -> None:
    """Every key, plugin type and parameter is one llm-d's strict decoder accepts, nothing is
    Alpha, and every pluginRef names a declared plugin."""
    config = _load(name)
    assert config["apiVersion"] == API_VERSION and config["kind"] == "EndpointPickerConfig"
    assert set(config) <= CONFIG_KEYS, set(config) - CONFIG_KEYS
    names = set()
    for plugin in config["plugins"]:
        assert set(plugin) <= PLUGIN_SPEC_KEYS, plugin
        assert plugin["type"] in PLUGINS, f"{plugin['type']} is not in the table of llm-d plugins"
        stability, params = PLUGINS[plugin["type"]]
        assert stability == "beta", plugin["type"]
        used = set(plugin.get("parameters") or {})
        assert used <= params, f"{plugin['type']}: unknown parameters {used - params}"
        names.add(plugin.get("name", plugin["type"]))  # the loader names a plugin by its type
    for engine in _engine_configs(config).values():
        assert set(engine) <= ENGINE_CONFIG_KEYS, set(engine) - ENGINE_CONFIG_KEYS
        for custom in engine.get("customMetrics", []):
            assert set(custom) <= CUSTOM_METRIC_KEYS, custom

    refs = []
    for profile in config["schedulingProfiles"]:
        assert set(profile) <= PROFILE_KEYS, profile
        for entry in profile["plugins"]:
            assert set(entry) <= PROFILE_PLUGIN_KEYS, entry
            refs.append(entry["pluginRef"])
    layer = config["dataLayer"]
    assert set(layer) <= DATA_LAYER_KEYS, set(layer) - DATA_LAYER_KEYS
    for source in layer["sources"]:
        assert set(source) <= SOURCE_KEYS, source
        refs.append(source["pluginRef"])
        for extractor in source["extractors"]:
            assert set(extractor) <= EXTRACTOR_KEYS, extractor
            refs.append(extractor["pluginRef"])
    if "discovery" in layer:
        assert set(layer["discovery"]) <= DISCOVERY_KEYS, layer["discovery"]
        refs.append(layer["discovery"]["pluginRef"])
    assert set(refs) <= names, set(refs) - names


@pytest.mark.parametrize("name", CONFIGS)
def test_scheduling_is_llm_d_default_profile(name: str) -> None:
    """Routing stays llm-d's default; only the metric behind the KV scorer changes."""
    (profile,) = _load(name)["schedulingProfiles"]
    weights = {e["pluginRef"]: e["weight"] for e in profile["plugins"] if "weight" in e}
    assert weights == DEFAULT_WEIGHTS
    assert {e["pluginRef"] for e in profile["plugins"]} - set(weights) == {"max-score-picker"}


@pytest.mark.parametrize("name", CONFIGS)
def test_engine_config_reads_the_projected_gauge(name: str) -> None:
    """Pods labelled breadcrumbs-vllm are scored on projected KV usage and vLLM's queue/running
    counts; unlabelled pods keep llm-d's built-in vLLM mapping."""
    config = _load(name)
    extractor = next(p for p in config["plugins"] if p["type"] == "core-metrics-extractor")
    assert extractor["parameters"]["engineLabelKey"] == ENGINE_LABEL_KEY
    assert extractor["parameters"]["defaultEngine"] == "vllm"
    engine = _our_engine(config)
    assert engine["kvUsageSpec"] == PROJECTED == "breadcrumbs_kv_cache_usage_projected_perc"
    # A named engine config replaces all of that engine's specs: repeat vLLM's where kept.
    for key in ("queuedRequestsSpec", "runningRequestsSpec", "cacheInfoSpec"):
        assert engine[key] == VLLM_ENGINE[key], key
    # The source and extractor are ours only; the loader must not inject default ones beside.
    assert config["dataLayer"]["injectDefaults"] is False


def test_no_k8s_config_is_the_k8s_one_plus_file_discovery() -> None:
    k8s, bare = _load(CONFIGS[0]), _load(CONFIGS[1])
    discovery = next(p for p in bare["plugins"] if p["type"] == "file-discovery")
    assert bare["dataLayer"].pop("discovery") == {"pluginRef": discovery.get("name",
                                                                             "file-discovery")}
    bare["plugins"].remove(discovery)
    assert bare == k8s
    assert Path(discovery["parameters"]["path"]).name == "endpoints.yaml"
    assert Path(discovery["parameters"]["path"]).is_absolute()


def _vllm_metric_names() -> set[str]:
    """Every ``vllm:*`` name the installed vLLM's Prometheus stat logger defines (read from its
    source, so vLLM is not imported for this)."""
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.origin is not None
    source = (Path(spec.origin).parent / "v1" / "metrics" / "loggers.py").read_text()
    return set(re.findall(r'"(vllm:[a-z_:]+)"', source))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_metric_names_are_served(name: str) -> None:
    """Each metric the EPP config selects is one a replica serves: vLLM's from vLLM 0.32's stat
    logger, ours registered by the plugin as a gauge labelled model_name and engine."""
    from breadcrumbs_vllm.vllm_plugin.metrics import PrometheusCompressionMetrics

    names = _metric_names(_our_engine(_load(name)))
    vllm_names = _vllm_metric_names()
    assert {n for n in names if n.startswith("vllm:")} <= vllm_names
    ours = {n for n in names if not n.startswith("vllm:")}
    assert ours == {PROJECTED}
    registry = CollectorRegistry()
    PrometheusCompressionMetrics(registry)  # the metrics the plugin's stat logger registers
    gauge = next(f for f in registry.collect() if f.name == PROJECTED)
    assert gauge.type == "gauge"


def test_endpoints_file_matches_file_discovery() -> None:
    """IPv4 literals and string ports (the plugin skips anything else), unique names, and the
    engine-type label that selects our engine config."""
    entries = _load("endpoints.yaml")["endpoints"]
    assert len(entries) >= 2
    for entry in entries:
        assert set(entry) <= ENDPOINT_KEYS, entry
        assert ipaddress.ip_address(entry["address"]).version == 4
        assert isinstance(entry["port"], str) and 1 <= int(entry["port"]) <= 65535
        assert entry["labels"][ENGINE_LABEL_KEY] == ENGINE
    assert len({e["name"] for e in entries}) == len(entries)
    assert ENGINE in _engine_configs(_load(CONFIGS[1]))


def test_inferencepool_selects_the_plugin_replicas() -> None:
    """The pool selects the replica pods, on their port, with the label that selects our engine
    config, and names the EPP Service of llm-d's chart for release `breadcrumbs`."""
    pool = _load("inferencepool.yaml")
    assert pool["apiVersion"] == POOL_API_VERSION and pool["kind"] == "InferencePool"
    spec = pool["spec"]
    assert set(spec) <= POOL_SPEC_KEYS, set(spec) - POOL_SPEC_KEYS
    ref = spec["endpointPickerRef"]
    assert set(ref) <= PICKER_REF_KEYS, set(ref) - PICKER_REF_KEYS
    assert ref["name"] == f"{pool['metadata']['name']}-epp"
    assert ref["port"] == {"number": EPP_EXT_PROC_PORT}
    assert ref["failureMode"] in FAILURE_MODES

    replicas = _load("replicas.yaml")
    template = replicas["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_labels[ENGINE_LABEL_KEY] == ENGINE
    (container,) = template["spec"]["containers"]
    ports = [p["containerPort"] for p in container["ports"]]
    assert [p["number"] for p in spec["targetPorts"]] == ports == [8000]
    assert "--port=8000" in container["args"]
    # vLLM's server with all three of the package's entry points allowlisted.
    assert container["command"][-1] == "vllm.entrypoints.openai.api_server"
    assert {"name": "VLLM_PLUGINS", "value": "breadcrumbs"} in container["env"]
    # One engine per pod: llm-d reads one series per metric name.
    assert not any(a.startswith("--data-parallel-size") for a in container["args"])


# --- assert_llm_d_metrics_contract on hand-written pages ---------------------------------------

def _page(engines: int = 2, drop: str = "", duplicate: str = "", as_counter: str = "",
          near_misses: bool = True) -> str:
    """A /metrics page shaped like vLLM 0.32's with the plugin (labels model_name and engine),
    optionally broken: a family (or the num_gpu_blocks label) dropped, a second series for
    engine 0, a gauge typed counter; with families named like the read ones as near misses."""
    model = 'model_name="countdown-student"'
    values = {"vllm:num_requests_waiting": 1.0, "vllm:num_requests_running": 3.0,
              "vllm:kv_cache_usage_perc": 0.25, PROJECTED: 0.61}
    lines = []
    for name, value in values.items():
        if name == drop:
            continue
        kind = "counter" if name == as_counter else "gauge"
        lines += [f"# HELP {name} x", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{engine="{e}",{model}}} {value}' for e in range(engines)]
        if name == duplicate:
            lines.append(f'{name}{{engine="0",model_name="other"}} {value}')
    if drop != "vllm:cache_config_info":
        lines += ["# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
                  "# TYPE vllm:cache_config_info gauge"]
        lines += [f'vllm:cache_config_info{{block_size="32",cache_dtype="auto",engine="{e}",'
                  f'num_gpu_blocks="{512 if drop != "num_gpu_blocks" else ""}"}} 1.0'
                  for e in range(engines)]
    if near_misses:  # families that must not be taken for the names above
        lines += ["# HELP vllm:num_requests_waiting_by_reason x",
                  "# TYPE vllm:num_requests_waiting_by_reason gauge",
                  f'vllm:num_requests_waiting_by_reason{{engine="0",{model},reason="capacity"}} 0',
                  f'vllm:num_requests_waiting_by_reason{{engine="0",{model},reason="deferred"}} 0',
                  "# HELP breadcrumbs_kv_blocks_held x", "# TYPE breadcrumbs_kv_blocks_held gauge",
                  f'breadcrumbs_kv_blocks_held{{engine="0",{model},ratio="4"}} 2.0',
                  f'breadcrumbs_kv_blocks_held{{engine="0",{model},ratio="8"}} 1.0']
    return "\n".join(lines) + "\n"


def test_metrics_contract_accepts_a_good_page() -> None:
    assert_llm_d_metrics_contract(_page(engines=2), engines=2)
    assert_llm_d_metrics_contract(_page(engines=1), engines=1)


@pytest.mark.parametrize(("broken", "reason"), [
    ({"drop": PROJECTED}, "missing"),
    ({"drop": "vllm:num_requests_waiting"}, "missing"),
    ({"drop": "vllm:cache_config_info"}, "missing"),
    ({"drop": "num_gpu_blocks"}, "not an integer"),
    ({"duplicate": PROJECTED}, "several series"),
    ({"duplicate": "vllm:kv_cache_usage_perc"}, "several series"),
    ({"as_counter": PROJECTED}, "is a counter"),
    ({"as_counter": "vllm:num_requests_running"}, "is a counter"),
], ids=lambda b: ("-".join(f"{k}={v}" for k, v in b.items()) if isinstance(b, dict)
                  else b.replace(" ", "_")))
def test_metrics_contract_rejects_a_broken_page(broken: dict[str, str], reason: str) -> None:
    """Each breakage fails, and for its own reason (not a side effect of how the page is built)."""
    with pytest.raises(AssertionError, match=reason):
        assert_llm_d_metrics_contract(_page(engines=2, **broken), engines=2)


def test_metrics_contract_counts_engines() -> None:
    """A data-parallel replica must show every engine; one engine's page is not two engines'."""
    with pytest.raises(AssertionError, match="expected 2 engine"):
        assert_llm_d_metrics_contract(_page(engines=1), engines=2)


def test_plugin_exposition_meets_the_contract() -> None:
    """The projected gauge as the plugin's own metrics class writes it for two engines (the
    vLLM half of the page hand-written) passes, and one engine's only does not."""
    from breadcrumbs_vllm.vllm_plugin.metrics import PrometheusCompressionMetrics
    from breadcrumbs_vllm.vllm_plugin.stats_channel import RatioFigures, Snapshot

    registry = CollectorRegistry()
    metrics = PrometheusCompressionMetrics(registry)
    counts = {"beacons": 2, "evicted": 16, "freed": 1}
    step = Snapshot(0.4, {8: RatioFigures(counts, 3, 5, True)}, {(None, 8): 1}, {"yes": 1},
                    waits=2)
    metrics.apply(step, {}, "countdown-student", "0")
    vllm_half = _page(engines=2, drop=PROJECTED, near_misses=False)
    with pytest.raises(AssertionError, match=PROJECTED):
        assert_llm_d_metrics_contract(vllm_half + generate_latest(registry).decode(), engines=2)
    metrics.apply(step, {}, "countdown-student", "1")
    assert_llm_d_metrics_contract(vllm_half + generate_latest(registry).decode(), engines=2)
