"""Helpers for tests that start a server in a subprocess and talk to it over loopback."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
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
