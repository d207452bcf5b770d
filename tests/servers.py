"""Helpers for tests that start a server in a subprocess and talk to it over loopback."""

from __future__ import annotations

import socket
import subprocess
import time
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
