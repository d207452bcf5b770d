"""The gateway on the bundled Countdown student, probed as a new user would after `make serve`.

One embedded engine for the module (run under ``flock /tmp/bc-cpu.lock``). The tiny random models
of the other gateway tests cannot show what a trained character-level model does with a grammar:
left free to place whitespace, it pads a JSON object with spaces and newlines until ``max_tokens``
runs out, so the answer is never valid JSON. Compact JSON (the gateway's default) ends these
schemas; a field the schema leaves unbounded still may not end on a weak model (``{"answer":
integer}`` at c=8 ran to ``max_tokens`` writing digits), which no grammar setting changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from servers import gateway_in_thread

from server import Settings, create_app

pytestmark = pytest.mark.vllm

MODEL = Path(__file__).resolve().parents[1] / "models" / "countdown-student"
QUESTION = [{"role": "user",
             "content": "Use 10 5 12 6 to make 21 with + - * /, each at most once."}]


@pytest.fixture(scope="module")
def base():
    settings = Settings(model=MODEL, served_model_name="countdown-student", kv_cache_gib=1,
                        max_model_len=1024, rate_limit_per_minute=0)
    with gateway_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("ratio", [None, 8])
@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]},
    {"type": "object", "properties": {"steps": {"type": "array", "items": {"type": "string"}},
                                      "result": {"type": "integer"}},
     "required": ["steps", "result"]},
], ids=["enum", "steps"])
def test_json_schema_output_is_valid_json_within_a_normal_max_tokens(client, schema, ratio):
    reply = client.chat.completions.create(
        model="countdown-student", messages=QUESTION, max_tokens=128, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema}},
        extra_body={"compression_ratio": ratio})
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", repr(choice.message.content)
    answer = json.loads(choice.message.content)
    assert set(schema["required"]) <= set(answer)


def test_the_probes_of_a_new_user_get_a_400(base):
    deep = b"[" * 50_000 + b"]" * 50_000
    resp = httpx.post(f"{base}/v1/chat/completions", content=deep,
                      headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == 400
    wizard = [{"role": "wizard", "content": "Use 3 5 8 to make 24."}]
    resp = httpx.post(f"{base}/v1/chat/completions",
                      json={"model": "countdown-student", "messages": wizard, "max_tokens": 8})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages[0].role"
    assert httpx.get(f"{base}/ready").status_code == 200
