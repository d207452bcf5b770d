"""Gateway settings: one pydantic-settings class, read from ``BREADCRUMBS_*`` env vars or flags.

Every cap lives here so that operators tune safety limits without code changes, and so that the
tests can build an app with tight limits to exercise each error path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """What the gateway serves, how it reaches the engine, and the limits it enforces."""

    model_config = SettingsConfigDict(env_prefix="BREADCRUMBS_", extra="ignore")

    model: Path = Field(description="checkpoint folder with a `breadcrumbs` block in config.json")
    served_model_name: str | None = Field(
        None, description="model id clients send; default: folder name")
    host: str = "127.0.0.1"
    port: int = 8000

    # Engine.
    upstream: str | None = Field(
        None, description="a vLLM OpenAI server (or a router in front of several) to forward to "
        "(remote mode); unset = embedded")
    kv_cache_gib: float | None = Field(
        None, gt=0, description="KV pool size (embedded); unset = on CPU a quarter of the memory "
        "free on the engine's NUMA node (at most 4 GiB), on GPUs vLLM's default")
    vllm_args: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="extra `vllm serve` flags for the embedded engine")
    block_size: int = Field(
        32, description="KV block size in tokens (CPU attention: multiple of 32)")
    max_model_len: int = 4096
    compile: bool | None = Field(
        None, description="torch.compile the model (embedded); None = only on GPUs. On a 2-core "
        "CPU compiling adds ~60-70 s to a cold start and decodes ~1.1-1.8x faster "
        "(bench_startup.py)")
    health_interval_s: float = Field(5.0, gt=0, description="remote upstream health poll")
    upstream_timeout_s: float = Field(600.0, gt=0)

    # Compression policy.
    kv_target: float = Field(0.8, gt=0, le=1, description=(
        "'auto' keeps the embedded engine's projected KV usage under this (a remote upstream "
        "uses its own: vLLM's --additional-config '{\"breadcrumbs_kv_target\": 0.8}')"))

    # Safety.
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="bearer keys; when set, /v1/* requires one")
    max_body_bytes: int = Field(1 << 20, gt=0)
    max_prompt_tokens: int = Field(2048, gt=0)
    max_tokens_cap: int = Field(1024, gt=0, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, gt=0)
    max_n: int = Field(4, ge=1)
    rate_limit_per_minute: int = Field(600, ge=0, description="per API key (or client IP); 0 = off")
    log_content: bool = Field(False, description="log prompts and completions (off: never logged)")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        """Env vars and flags give comma-separated strings; Python callers give lists."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("vllm_args", mode="before")
    @classmethod
    def _split_words(cls, value: object) -> object:
        """``BREADCRUMBS_VLLM_ARGS="--tool-call-parser hermes ..."``: split like a shell."""
        if isinstance(value, str):
            import shlex

            return shlex.split(value)
        return value

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model.resolve().name
