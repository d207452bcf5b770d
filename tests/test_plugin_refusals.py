"""What the plugin refuses for a beacon model, each with a one-line error, and what a failed
surface check leaves working.

Config-time refusals need no engine: ``EngineArgs.create_engine_config`` (which the plugin's
patch wraps) raises them. The surface check runs in a subprocess with a faked vLLM version, so
this process keeps its patches; there a stock model's config is vLLM's own and its engine
generates, while a beacon model is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from vllm.engine.arg_utils import EngineArgs

from breadcrumbs_vllm.checkpoint import init_model, save_checkpoint
from breadcrumbs_vllm.vllm_plugin.scheduler import PhysicalBlockAccountant


@pytest.fixture(scope="module")
def gqa_checkpoint(tmp_path_factory):
    """4 query heads over 1 KV head: what vLLM asks of a model before decode context
    parallelism over 2 ranks is even considered (TP must divide the heads and exceed the KV
    heads)."""
    model, tokenizer, bc = init_model(layers=1, hidden=64, heads=4, kv_heads=1, seed=1)
    return save_checkpoint(model, tokenizer, bc, tmp_path_factory.mktemp("gqa") / "gqa")


def config_error(**engine_args) -> str:
    """The one-line message ``create_engine_config`` refuses ``engine_args`` with."""
    with pytest.raises((ValueError, RuntimeError)) as caught:
        EngineArgs(**engine_args).create_engine_config()
    message = str(caught.value)
    assert "\n" not in message.strip(), message
    return message


@pytest.mark.parametrize("overrides,expected", [
    ({"async_scheduling": True}, "drop --async-scheduling"),
    ({"pipeline_parallel_size": 2}, "pipeline parallelism is not supported"),
    ({"tensor_parallel_size": 2, "decode_context_parallel_size": 2, "model": "gqa"},
     "context parallelism"),
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 2,
                             "prompt_lookup_max": 2}}, "speculative decoding is not supported"),
    ({"worker_cls": "my_package.MyWorker"}, "worker_cls=my_package.MyWorker"),
    ({"additional_config": {"breadcrumbs_admission_overcommit": -0.1}},
     "breadcrumbs_admission_overcommit is a share of the KV pool, a number >= 0; got -0.1"),
    ({"additional_config": {"breadcrumbs_kv_target": "high"}},
     "breadcrumbs_kv_target is a share of the KV pool"),
], ids=["async-scheduling", "pipeline-parallel", "context-parallel", "speculative", "worker-cls",
        "overcommit", "target"])
def test_a_beacon_model_refuses_what_the_plugin_cannot_serve(tiny_checkpoint, gqa_checkpoint,
                                                             overrides, expected):
    models = {"tiny": tiny_checkpoint, "gqa": gqa_checkpoint}
    overrides = {"model": "tiny", **overrides}
    overrides["model"] = str(models[overrides["model"]])
    message = config_error(dtype="float32", block_size=32, **overrides)
    assert message.startswith("breadcrumbs: ") and expected in message, message


def test_a_stock_model_keeps_what_a_beacon_model_refuses(stock_checkpoint):
    config = EngineArgs(model=str(stock_checkpoint), dtype="float32", block_size=32,
                        worker_cls="my_package.MyWorker").create_engine_config()
    assert config.parallel_config.worker_cls == "my_package.MyWorker"
    assert config.scheduler_config.scheduler_cls is None or \
        "breadcrumbs" not in str(config.scheduler_config.scheduler_cls)


def test_several_kv_groups_raise_a_value_error_not_an_assert():
    manager = SimpleNamespace(num_kv_cache_groups=2)
    with pytest.raises(ValueError, match="one full-attention KV-cache group, this engine has 2"):
        PhysicalBlockAccountant.adopt(manager, {}, None)


SURFACE_FAILS = """
import vllm
vllm.__version__ = "0.0.1"  # what check_surface compares first
from vllm.engine.arg_utils import EngineArgs
from vllm.v1.engine.input_processor import InputProcessor

stock = EngineArgs(model={stock!r}, dtype="float32", block_size=32).create_engine_config()
print("stock", stock.scheduler_config.scheduler_cls, stock.parallel_config.worker_cls)
print("validate patched", hasattr(InputProcessor._validate_params, "__breadcrumbs_patch__"))
try:
    EngineArgs(model={beacon!r}, dtype="float32", block_size=32).create_engine_config()
except RuntimeError as exc:
    print("beacon refused:", exc)

from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

llm = LLM(model={stock!r}, dtype="float32", block_size=32, max_model_len=256, enforce_eager=True)
out = llm.generate([TokensPrompt(prompt_token_ids=[10, 20, 30])],
                   SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
print("stock generated", len(out[0].outputs[0].token_ids))
"""


def test_a_failed_surface_check_refuses_beacon_models_only(tiny_checkpoint, stock_checkpoint):
    script = textwrap.dedent(SURFACE_FAILS).format(stock=str(stock_checkpoint),
                                                    beacon=str(tiny_checkpoint))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, check=False, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "stock None vllm.v1.worker.cpu_worker.CPUWorker" in lines, done.stdout
    assert "validate patched False" in lines  # nothing of the plugin on a stock model's path
    refused = [line for line in lines if line.startswith("beacon refused:")]
    assert refused and "vllm 0.0.1 installed, plugin pinned to 0.32.0" in refused[0], done.stdout
    assert "stock generated 4" in lines, done.stdout  # and a stock engine serves
