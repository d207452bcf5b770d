"""``breadcrumbs serve``: the gateway on the bundled model (or a given one, or a remote engine).

Without ``--model`` it serves the bundled model (``BUNDLED_MODEL_GLOB``); with no trained model in
``models/`` it creates a random beacon-capable model once, in a cache folder, and says so.
Flags override ``BREADCRUMBS_*`` environment variables (see ``server.settings.Settings``); flags
after ``--`` go to vLLM's engine and serving layer as they would to ``vllm serve``.

In embedded mode the engine starts before the port opens, so a server that cannot start says so
in one line (why, and which flag fixes it) and exits with code 2 instead of half coming up. The
port is reserved (bound, not yet listening) before the engine starts: a port in use fails at once
instead of after the engine's start, and no port the engine picks for itself can take it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

# Where the bundled model lives: the first match with a ``breadcrumbs`` block is served.
BUNDLED_MODEL_GLOB = "models/*/config.json"
REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "breadcrumbs"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the OpenAI-compatible gateway (embedded vLLM)")
    p.add_argument("--model", help="checkpoint folder (default: the bundled model)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--kv-cache-gib", type=float,
                   help="KV pool size in GiB (default on CPU: a quarter of the memory free on "
                        "the engine's NUMA node, at most 4; on GPUs: vLLM's default)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="torch.compile the model (default: on GPUs only; on CPU it adds ~60-70 s "
                        "to a cold start)")
    p.add_argument("--api-keys", help="comma-separated bearer keys; when set, every route but "
                                      "/health, /ready and /metrics needs one")
    p.add_argument("--upstream", help="a vLLM server (or router) URL to forward to (remote mode)")
    p.add_argument("--kv-target", type=float, help="KV usage 'auto' keeps under (0-1]")
    p.add_argument("--log-content", action="store_true", help="log prompts and completions")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER,
                   help="after --: flags for vLLM's engine and serving layer (as `vllm serve`)")
    p.set_defaults(func=run)


def bundled_model() -> Path | None:
    """The first bundled checkpoint that has a ``breadcrumbs`` block, if any."""
    for config in sorted(REPO_ROOT.glob(BUNDLED_MODEL_GLOB)):
        try:
            if "breadcrumbs" in json.loads(config.read_text()):
                return config.parent
        except (OSError, json.JSONDecodeError):
            continue
    return None


def random_model() -> Path:
    """A small random model in the cache folder, made once with init-model's logic."""
    from breadcrumbs_vllm.checkpoint import init_model, save_checkpoint

    out = CACHE_DIR / "random-2x64"
    if not (out / "config.json").is_file():
        model, tokenizer, bc = init_model(2, 64)
        save_checkpoint(model, tokenizer, bc, out)
        print(f"no bundled model under {REPO_ROOT / 'models'}; created a random one at {out}")
    return out


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` without listening: clients are refused until uvicorn serves on it.

    ``SO_REUSEADDR`` as uvicorn binds, so a port a stopped server left in TIME_WAIT counts as free.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot bind {host}:{port} ({exc.strerror}); pass another --port or "
                         f"--host") from None
    return sock


def run(args: argparse.Namespace) -> int:
    from server import Settings, create_app
    from server.engines.embedded import EmbeddedBackend
    from server.memory import PoolTooLarge

    extra = [a for a in args.vllm_args if a != "--"]
    overrides = {k: v for k, v in {
        "host": args.host, "port": args.port, "kv_cache_gib": args.kv_cache_gib,
        "api_keys": args.api_keys, "upstream": args.upstream, "kv_target": args.kv_target,
        "log_content": args.log_content or None, "compile": args.compile,
        "vllm_args": extra or None,
    }.items() if v is not None}
    model = args.model or os.environ.get("BREADCRUMBS_MODEL") or bundled_model() or random_model()
    settings = Settings(model=Path(model), **overrides)
    app = create_app(settings)
    backend = app.state.backend
    listener = reserve_port(settings.host, settings.port)
    if isinstance(backend, EmbeddedBackend):
        try:
            backend.start_engine()
        except PoolTooLarge as exc:
            raise ValueError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 -- vLLM's log above has the details
            raise ValueError(f"the engine did not start ({type(exc).__name__}: {exc}); vLLM's "
                             f"log above says why. If it ran out of memory, pass a smaller "
                             f"--kv-cache-gib") from None
        print(backend.pool.describe(backend.pool_tokens(), settings.block_size), flush=True)
    import uvicorn

    ratios = app.state.policy.ratios
    print(f"serving {settings.model_name} ({settings.model}) at "
          f"http://{settings.host}:{settings.port}/v1  compression ratios: "
          f"{', '.join(map(str, ratios))}, none, auto", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])
    return 0
