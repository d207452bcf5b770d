"""``breadcrumbs router``: N vLLM replicas with the plugin behind the vLLM Router, on loopback.

Each replica is vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``) with
``VLLM_PLUGINS=breadcrumbs``, which also serves ``GET /get_load`` (projected KV usage + queue,
``breadcrumbs_vllm/vllm_plugin/load.py``). The router (``vllm-router``, Rust) polls that route
every ``--poll-interval`` seconds and, under ``power_of_two``, sends each request to the less
loaded replica. Replicas take the ports after ``--port``; the router's Prometheus port is the next.

On CPU every replica gets an explicit KV pool (vLLM's own sizing fails when the first NUMA node
holds a small part of the memory), float32, eager mode, and its own core(s) through
``VLLM_CPU_OMP_THREADS_BIND``; on GPUs vLLM's defaults stand and replica i gets GPU i when there
are enough. Flags after ``--`` go to every replica. Children run in their own process groups and
are stopped, engine cores included, when this command ends for any reason.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"
POLICIES = ("power_of_two", "round_robin", "random", "cache_aware", "consistent_hash",
            "sticky_least_loaded")
CPU_BLOCK_SIZE = 32  # vLLM's CPU attention needs a multiple of 32


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("router", help="start N vLLM replicas with the plugin behind the vLLM "
                                      "Router (loopback)",
                       usage="%(prog)s [options] [-- flags for every replica's vLLM]")
    p.add_argument("--model", help="checkpoint folder (default: the bundled model)")
    p.add_argument("-n", "--replicas", type=int, default=2, help="number of replicas (default 2)")
    p.add_argument("--port", type=int, default=8000,
                   help="router port (default 8000); replicas take the next N ports")
    p.add_argument("--policy", choices=POLICIES, default="power_of_two",
                   help="the router's policy (default power_of_two, on each replica's /get_load)")
    p.add_argument("--poll-interval", type=int, default=2,
                   help="seconds between the router's /get_load polls (default 2)")
    p.add_argument("--kv-cache-gib", type=float,
                   help="KV pool per replica in GiB (default on CPU: a quarter of the memory free "
                        "on the NUMA node, split over the replicas, at most 4; on GPUs: vLLM's)")
    p.add_argument("--start-timeout", type=float, default=300,
                   help="seconds a replica may take to answer /health (default 300)")
    p.add_argument("--log-dir", type=Path, help="where the children's logs go (default: a new "
                                                "temporary folder)")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER,
                   help="after --: flags for every replica's vLLM server (as `vllm serve`)")
    p.set_defaults(func=run)


@dataclass
class Child:
    """A process we started, with where it answers and where it logs."""

    name: str
    url: str
    proc: subprocess.Popen
    log: Path

    def failure(self) -> str:
        """One line on why it stopped: its exit code and its log's last error (vLLM ends a failed
        start with shutdown noise, so the last line rarely says why), else its last line."""
        lines = [ln.strip() for ln in self.log.read_text(errors="replace").splitlines()
                 if ln.strip()] or ["(empty log)"]
        why = lines[-1]
        for line in lines:
            found = _ERROR.search(line)
            if found and " WARNING " not in line and "root cause above" not in line:
                why = line[found.start():]
        return f"{self.name} exited with code {self.proc.returncode}: {why[:300]} " \
               f"(log: {self.log})"


#: A line that says why: ``ValueError: ...`` or argparse's ``prog: error: ...``.
_ERROR = re.compile(r"\w*(Error|Exception): |\S+: error: ")


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def core_sets(replicas: int) -> list[list[int]]:
    """The cores of each replica: the usable cores split into equal runs (more replicas than
    cores: they share, round robin). The whole replica is pinned there, not only its model
    threads: vLLM's engine core polls its worker in a busy loop, and left free it takes the
    next replica's core and starves that replica's HTTP server (``/get_load`` then answers in
    seconds, and the router routes on stale loads)."""
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // replicas)
    return [[cores[(i * per + j) % len(cores)] for j in range(per)] for i in range(replicas)]


def bind_spec(cores: list[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND``'s syntax for a run of cores: ``3`` or ``2-3``."""
    return str(cores[0]) if len(cores) == 1 else f"{cores[0]}-{cores[-1]}"


def kv_pool_gib(requested: float | None, replicas: int) -> float:
    """The CPU KV pool per replica: as asked, or a share of the NUMA node's free memory split
    over the replicas; refuses what cannot fit (all replicas allocate on that node here)."""
    from server.memory import DEFAULT_SHARE, GIB, MAX_GIB, MIN_GIB, cpu_node_free_bytes

    node, free = cpu_node_free_bytes()
    if requested is not None:
        if requested * replicas * GIB > free:
            raise ValueError(f"{replicas} x --kv-cache-gib {requested:g} does not fit: NUMA node "
                             f"{node} has {free / GIB:.2f} GiB free; pass a smaller one")
        return requested
    gib = min(MAX_GIB, math.floor(free * DEFAULT_SHARE / replicas / GIB * 4) / 4)
    if gib < MIN_GIB:
        raise ValueError(f"only {free / GIB:.2f} GiB is free on NUMA node {node}, too little for "
                         f"{replicas} KV pools; pass --kv-cache-gib")
    return gib


def replica_command(model: Path, port: int, cpu: bool, kv_gib: float | None,
                    extra: list[str]) -> list[str]:
    """vLLM's OpenAI server; ``extra`` last, so a user's flag wins (argparse: last wins)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", model.resolve().name, "--host", HOST, "--port", str(port)]
    if cpu:
        cmd += ["--dtype", "float32", "--enforce-eager", "--block-size", str(CPU_BLOCK_SIZE),
                "--kv-cache-memory-bytes", str(int(kv_gib * (1 << 30)))]
    elif kv_gib is not None:
        cmd += ["--kv-cache-memory-bytes", str(int(kv_gib * (1 << 30)))]
    return cmd + extra


def replica_env(index: int, cpu: bool, cores: list[list[int]], gpus: int) -> dict[str, str]:
    env = {**os.environ, "VLLM_PLUGINS": "breadcrumbs"}
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would silently replace our explicit pool
    if cpu:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind_spec(cores[index])
    elif gpus >= len(cores) and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = str(index)
    return env


def _libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: no parent-death signal, stop_all still stops children
        return None


_LIBC = _libc()


def _in_child(cores: list[int] | None) -> None:
    """In the child, before exec: pinned to ``cores`` (inherited by its engine processes), and
    SIGTERM when the launcher dies without cleaning up (Linux's PR_SET_PDEATHSIG), so a killed
    launcher leaves no replica. Two system calls, nothing else."""
    if cores:
        os.sched_setaffinity(0, cores)
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)


def launch(name: str, url: str, cmd: list[str], env: dict[str, str], log: Path,
           cores: list[int] | None = None) -> Child:
    """Start ``cmd`` in its own session (we stop its whole process group, engine cores
    included), its output to ``log``."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=lambda: _in_child(cores))  # noqa: PLW1509
    return Child(name, url, proc, log)


def wait_healthy(children: list[Child], timeout: float) -> None:
    """Until every child answers ``/health`` 200; the first to die (or time out) is an error."""
    pending, deadline = list(children), time.monotonic() + timeout
    while pending:
        for child in list(pending):
            if child.proc.poll() is not None:
                raise ValueError(child.failure())
            try:
                if httpx.get(f"{child.url}/health", timeout=2).status_code == 200:
                    pending.remove(child)
            except httpx.HTTPError:
                pass
        if pending and time.monotonic() > deadline:
            raise ValueError(f"{pending[0].name} did not answer /health within {timeout:g} s "
                             f"(log: {pending[0].log}); pass a larger --start-timeout")
        time.sleep(0.5 if pending else 0)


def stop_all(children: list[Child], grace: float = 30) -> None:
    """SIGTERM to each child's process group, SIGKILL to whatever is left after ``grace`` s."""
    for child in children:
        if child.proc.poll() is None:
            _signal_group(child.proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(child.proc, signal.SIGKILL)  # the group may outlive its leader
        child.proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def check_ports_free(ports: list[int]) -> None:
    """Fail before starting anything if a port is taken (as the servers bind: SO_REUSEADDR, so
    a recently closed port in TIME_WAIT counts as free)."""
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                raise ValueError(f"port {port} on {HOST} is in use; pass another --port "
                                 f"(the router takes it, the replicas the next ones)") from None


def start_replicas(model: Path, ports: list[int], kv_gib: float | None, extra: list[str],
                   log_dir: Path, timeout: float, children: list[Child]) -> list[Child]:
    """Start one replica per port at once, appending each to ``children`` as soon as it runs
    (so the caller can stop it), and wait until all are healthy."""
    cpu = on_cpu()
    if cpu:
        kv_gib = kv_pool_gib(kv_gib, len(ports))
    cores = core_sets(len(ports)) if cpu else [[] for _ in ports]
    gpus = 0 if cpu else _gpu_count()
    started = []
    for i, port in enumerate(ports):
        url = f"http://{HOST}:{port}"
        cmd = replica_command(model, port, cpu, kv_gib, extra)
        child = launch(f"replica {i}", url, cmd, replica_env(i, cpu, cores, gpus),
                       log_dir / f"replica-{i}.log", cores[i])
        children.append(child)
        started.append(child)
    wait_healthy(started, timeout)
    for i, child in enumerate(started):
        where = f"cores {bind_spec(cores[i])}, KV {kv_gib:g} GiB" if cpu else "GPU"
        print(f"replica {i}: {child.url}  ({where}, pid {child.proc.pid}, log {child.log})",
              flush=True)
    return started


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def router_binary() -> str:
    """``vllm-router`` next to this Python (the venv's), else on PATH."""
    here = Path(sys.executable).with_name("vllm-router")
    found = str(here) if here.is_file() else shutil.which("vllm-router")
    if not found:
        raise ValueError("vllm-router not found; install it with `pip install vllm-router` "
                         "(the dev extra has it)")
    return found


def start_router(replicas: list[Child], port: int, policy: str, poll_interval: int,
                 log_dir: Path, children: list[Child], timeout: float = 60) -> Child:
    """The vLLM Router on ``port`` in front of ``replicas``; its Prometheus port is the one after
    the last replica. Returns once its ``/health`` says every worker is healthy."""
    metrics_port = max(int(r.url.rsplit(":", 1)[1]) for r in replicas) + 1
    cmd = [router_binary(), "--host", HOST, "--port", str(port), "--policy", policy,
           "--worker-urls", *[r.url for r in replicas],
           "--worker-startup-check-interval", str(poll_interval),
           "--prometheus-host", HOST, "--prometheus-port", str(metrics_port)]
    child = launch("router", f"http://{HOST}:{port}", cmd, dict(os.environ),
                   log_dir / f"router-{policy}.log")
    children.append(child)
    wait_healthy([child], timeout)
    print(f"router: {child.url}/v1  ({policy}, /get_load polled every {poll_interval} s, "
          f"metrics http://{HOST}:{metrics_port}/metrics, pid {child.proc.pid}, log {child.log})",
          flush=True)
    return child


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from server.cli.serve import bundled_model

    if args.replicas < 1 or args.poll_interval < 1:
        raise ValueError("--replicas and --poll-interval must be at least 1")
    if args.replicas < 2 and args.policy == "power_of_two":
        raise ValueError("power_of_two needs at least 2 replicas; pass -n 2 or another --policy")
    model = Path(args.model) if args.model else bundled_model()
    if model is None or not (model / "config.json").is_file():
        raise FileNotFoundError(f"no model at {model}; pass --model")
    ports = [args.port + i for i in range(args.replicas + 2)]  # router, replicas, its metrics
    check_ports_free(ports)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="breadcrumbs-router-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    extra = [a for a in args.vllm_args if a != "--"]
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops the children as Ctrl-C does
    children: list[Child] = []
    try:
        replicas = start_replicas(model, ports[1:-1], args.kv_cache_gib, extra, log_dir,
                                  args.start_timeout, children)
        start_router(replicas, args.port, args.policy, args.poll_interval, log_dir, children)
        while all(c.proc.poll() is None for c in children):
            time.sleep(1)
        raise ValueError(next(c for c in children if c.proc.poll() is not None).failure())
    finally:
        stop_all(children)
