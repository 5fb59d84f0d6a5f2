"""The chaos run's processes: a private append-only Redis, and a supervisor that restarts the dead.

Every service runs in a session of its own. kill -9 reaches the whole family: RQ's work horse
calls setpgrp, so killing the worker's process group alone would leave the horse working.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import redis

from provisioner.supervisor import child_environment, descendants, free_port, signal_group
from shared.connections import redis_client

RESTART_DELAY = 0.5  # seconds before a dead service is started again (compose's restart policy)
WATCH_EVERY = 0.2


@dataclass(frozen=True)
class Restart:
    name: str
    at: float  # seconds since the run started
    cause: str  # "kill -9 (chaos)" or "exited <code>"


class Service:
    """One supervised command; `argv_for(generation)` builds each start's command line."""

    def __init__(
        self,
        name: str,
        argv_for: Callable[[int], list[str]],
        env: Mapping[str, str],
        log_dir: Path,
        parent_env: Mapping[str, str],
    ) -> None:
        self.name = name
        self.argv_for = argv_for
        self.env = child_environment(parent_env, env)
        self.log_dir = log_dir
        self.generation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False  # the next death was ours, not the service's own doing
        self.stopping = False
        self.logs: list[Path] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def current_name(self) -> str:
        """`<name>-g<generation>`: the RQ worker name, unique per start."""
        return f"{self.name}-g{self.generation}"

    def start(self) -> None:
        self.generation += 1
        log_path = self.log_dir / f"{self.current_name}.log"
        self.logs.append(log_path)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv_for(self.generation),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.killed = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """kill -9 the process and every process it forked (RQ work horses included)."""
        self.killed = True
        _kill_family(self.pid, descendants(self.pid))
        assert self.proc is not None
        self.proc.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (an RQ worker finishes its job), then SIGKILL whatever is left."""
        self.stopping = True
        if self.proc is None:
            return
        family = descendants(self.pid)
        if self.alive():
            signal_group(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            family |= descendants(self.pid)
        _kill_family(self.pid, family)
        self.proc.wait(timeout=10)


def _kill_family(pid: int, family: set[int]) -> None:
    signal_group(pid, signal.SIGKILL)
    for member in family:
        signal_group(member, signal.SIGKILL)


class Supervisor:
    """Starts services and restarts any that dies, after a short delay, recording why it died."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.services: list[Service] = []
        self.restarts: list[Restart] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chaos-supervisor", daemon=True)

    def add(self, service: Service) -> Service:
        service.start()
        self.services.append(service)
        return service

    def start(self) -> None:
        self._thread.start()

    def named(self, prefix: str) -> list[Service]:
        return [s for s in self.services if s.name.startswith(prefix)]

    def kill9(self, service: Service) -> None:
        with self._lock:  # the watcher must not restart it half way through the kill
            service.kill9()

    def stop_all(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for service in reversed(self.services):
            service.stop()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY):
            for service in self.services:
                with self._lock:
                    if service.stopping or service.alive():
                        continue
                    cause = "kill -9 (chaos)" if service.killed else _exit_cause(service)
                    self.restarts.append(Restart(service.current_name, self.clock(), cause))
                time.sleep(RESTART_DELAY)
                with self._lock:
                    if not self._stop.is_set() and not service.stopping:
                        service.start()


def _exit_cause(service: Service) -> str:
    code = service.proc.returncode if service.proc is not None else None
    return f"exited {code}"


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class RedisServer:
    """redis-server with append-only persistence (as compose runs it) on a free loopback port."""

    def __init__(self, work_dir: Path, password: str) -> None:
        self.work_dir = work_dir
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        work_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if binary is None:
            raise RuntimeError("chaos needs redis-server (or valkey-server) on PATH")
        self.proc = subprocess.Popen(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
                *("--requirepass", self.password, "--dir", str(self.work_dir)),
                *("--logfile", str(self.work_dir / "redis.log")),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not self._wait_up(15.0):
            raise RuntimeError(f"redis-server did not start; see {self.work_dir / 'redis.log'}")

    def restart(self, down_for: float) -> None:
        """What `docker compose restart redis` does: SIGTERM (the AOF is flushed), then start."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def crash(self, down_for: float) -> None:
        """kill -9 (a host or container crash): nothing is flushed, so the writes of up to the
        last second (appendfsync everysec) are lost; then start on the same data dir."""
        if self.proc is not None and self.proc.poll() is None:
            signal_group(self.proc.pid, signal.SIGKILL)  # an AOF rewrite child dies with it
            self.proc.wait(timeout=30)
        time.sleep(down_for)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def _wait_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            conn = redis_client(self.url, socket_timeout=0.5)
            try:
                if conn.ping():
                    return True
            except redis.RedisError:
                pass
            finally:
                conn.close()
            if self.proc is not None and self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False
