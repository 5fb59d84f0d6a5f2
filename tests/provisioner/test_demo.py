"""`provisioner demo` end to end, as a real command: real services, real Redis, real sandbox."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from provisioner.kit.private_redis import answers

pytestmark = pytest.mark.slow

VENV_BIN = str(Path(sys.executable).parent)
ROW = re.compile(r"^\d{8}  ")
EXPECTED_SIX = Counter({"Activated": 3, "409": 1, "UNMAPPED_PRODUCT": 1, "503": 1})


def demo_env(redis_url: str) -> dict[str, str]:
    # PATH holds only the virtualenv: no redis-server to fall back on, as on a fresh machine.
    env = {"PATH": VENV_BIN, "HOME": os.environ.get("HOME", "/tmp"), "REDIS_URL": redis_url}
    return {**env, "PYTHONUNBUFFERED": "1"}


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "provisioner.cli", "demo", *args]


def summary(output: str) -> Counter:
    """outcome (Activated) or error code (Failed) of each row of the summary table."""
    counts: Counter = Counter()
    for line in output.splitlines():
        if ROW.match(line):
            _order, _customer, status, _whmcs, code, *_rest = re.split(r"\s{2,}", line)
            counts[status if status == "Activated" else code] += 1
    return counts


def stopped_pids(output: str) -> dict[str, int]:
    line = next(x for x in output.splitlines() if x.startswith("stopped:"))
    pairs = (part.split() for part in line.removeprefix("stopped:").split(","))
    return {name: int(pid) for name, pid in pairs}


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        try:
            if stat.read_text().rpartition(")")[2].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("transport", ["cometd", "pubsub"])
def test_demo_runs_the_whole_flow_and_stops_everything(redis_conn, redis_url, tmp_path, transport):
    done = subprocess.run(
        demo_command("--orders", "6", "--transport", transport),
        cwd=tmp_path,
        env=demo_env(redis_url),
        capture_output=True,
        text=True,
        timeout=100,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "using REDIS_URL" in out
    assert ("Pub/Sub API" in out) is (transport == "pubsub")
    assert summary(out) == EXPECTED_SIX, out
    assert "6 orders: 3 activated, 3 failed, every one as the fixtures expect." in out
    assert re.search(r"health\s+http://127\.0\.0\.1:\d+/health", out)
    pids = stopped_pids(out)
    assert set(pids) == {"health", "worker-1", "worker-2", "subscriber"}
    assert all(gone(pid) for pid in pids.values())
    # The services' JSON lines went to the log file under .demo/ of the current directory.
    services = {json.loads(line).get("service") for line in _json_lines(tmp_path)}
    assert {"subscriber", "worker", "healthcheck"} <= services
    assert redis_conn.dbsize() == 0  # the demo leaves REDIS_URL's database as it found it


def test_without_a_redis_it_starts_valkey_and_ctrl_c_stops_everything(tmp_path):
    closed = f"redis://127.0.0.1:{_closed_port()}/0"
    # Started the way a shell without job control starts `cmd &`: with SIGINT ignored. Ctrl-C
    # (SIGINT) must stop it all the same.
    ignoring_sigint = ["/bin/sh", "-c", 'trap "" INT; exec "$0" "$@"']
    with subprocess.Popen(
        [*ignoring_sigint, *demo_command("--orders", "4", "--keep-running")],
        cwd=tmp_path,
        env=demo_env(closed),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        lines, reader = _collect(demo)
        try:
            _wait_for(lines, "Still running", demo)
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(timeout=60)
            reader.join(timeout=10)
    out = "".join(lines)
    assert demo.returncode == 0, out
    private = re.search(r"started a private server: valkey-server at (redis://\S+)", out)
    assert private, out
    assert summary(out) == Counter({"Activated": 1, "409": 1, "UNMAPPED_PRODUCT": 1, "503": 1})
    pids = stopped_pids(out)
    assert set(pids) == {"health", "worker-1", "worker-2", "subscriber", "redis"}
    assert all(gone(pid) for pid in pids.values())
    assert not answers(private.group(1))


def test_a_second_demo_in_the_same_directory_is_refused(tmp_path):
    (tmp_path / ".demo").mkdir()
    with open(tmp_path / ".demo" / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = subprocess.run(
            demo_command("--orders", "1"),
            cwd=tmp_path,
            env=demo_env("redis://127.0.0.1:1/0"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert "another demo is running" in done.stderr


def _json_lines(workdir: Path) -> list[str]:
    text = (workdir / ".demo" / "demo.log").read_text()
    return [line for line in text.splitlines() if line.startswith("{")]


def _collect(proc: subprocess.Popen) -> tuple[list[str], threading.Thread]:
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


def _wait_for(lines: list[str], text: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in lines):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in the demo's output:\n{''.join(lines)}")


def _closed_port() -> int:
    from provisioner.kit.supervisor import free_port

    return free_port()
