"""Helpers for tests that start a server in a subprocess and talk to it over loopback."""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

# Ports the kernel hands out for "any free port" (bind to 0, outgoing connections); see
# /proc/sys/net/ipv4/ip_local_port_range. vLLM picks its internal ports that way, so a test
# server's port is drawn from below this range, where no engine started meanwhile can take it.
EPHEMERAL_LOW = 32768


def free_port() -> int:
    """A loopback port that is free now and outside the kernel's ephemeral range."""
    while True:
        port = random.randrange(20000, EPHEMERAL_LOW)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> float:
    """Poll ``url`` until it answers 200; fail with the server's log if it dies or times out.

    Returns the seconds it took.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout} s\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Interrupt like Ctrl-C, then kill if it does not exit within a minute."""
    proc.send_signal(2)  # SIGINT
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def gateway_in_thread(app) -> Iterator[str]:
    """Serve ``app`` (a gateway from ``create_app``) with uvicorn on a loopback port in a
    background thread; yields its base URL once ``/ready`` answers 200, stops it after."""
    import uvicorn

    # Bound before the app's lifespan starts the engine (uvicorn binds after it), so none of the
    # ports the engine picks for itself can take the gateway's.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert thread.is_alive(), "the gateway stopped while starting"
            time.sleep(1)
        else:
            raise AssertionError("gateway did not become ready within 240 s")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        listener.close()
