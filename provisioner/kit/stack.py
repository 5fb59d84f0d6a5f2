"""The kit's set-up: the sandbox, a database, a Redis and our services, all on this machine.

The demo, the bench and the chaos run each build one with their options, then say which services
to start (the subscriber, N workers, the health app); the services run as real processes, started
exactly as production starts them, under the stack's supervisor. `close()` stops them all, then
whatever the stack started or was given (newest first).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Worker

from provisioner.kit.database import Database
from provisioner.kit.supervisor import Argv, Child, Supervisor, python_module
from sandbox.app import Sandbox
from sandbox.client import SandboxAdmin
from shared import keys
from shared.config import DEFAULT_CHANNEL
from shared.connections import redis_client

QUEUE = "provisioning"


class NotReady(RuntimeError):
    """A service died, or did not get ready in time; the message says which, with a log tail."""


class Stack:
    def __init__(
        self, work_dir: Path, supervisor: Supervisor, settings: Mapping[str, str] = ()
    ) -> None:
        self.work_dir = work_dir
        self.supervisor = supervisor
        self.settings = dict(settings)  # the services' environment on top of the stack's own
        self.redis_url = ""
        self.database: Database | None = None
        self.sandbox: Any = None
        self.admin: Any = None
        self._closers: list[Callable[[], None]] = []

    def close(self) -> list[Child]:
        """Stop every service, then the rest; returns the services in the order stopped."""
        stopped = self.supervisor.stop_all()
        while self._closers:
            self._closers.pop()()
        return stopped

    def on_close(self, closer: Callable[[], None]) -> None:
        self._closers.append(closer)

    # --- what the services stand on ----------------------------------------------------------

    def use_redis(self, url: str) -> None:
        self.redis_url = url

    def use_database(self, database: Database) -> None:
        """Migrated now, dropped (when it was made for the run) on close."""
        self.on_close(database.drop)
        self.database = database.migrate()

    def start_sandbox(self, **options: Any) -> None:
        self.sandbox = Sandbox.start(self.work_dir / "sandbox", **options)
        self.on_close(self.sandbox.stop)
        self.admin = SandboxAdmin(self.sandbox.admin_url)
        self.on_close(self.admin.close)

    def env(self) -> dict[str, str]:
        assert self.database is not None
        return {
            **self.sandbox.env,
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.database.url,
            "SF_EVENTS_ENABLED": "true",
            **self.settings,
        }

    def conn(self) -> redis.Redis:
        return redis_client(self.redis_url)

    # --- the services ------------------------------------------------------------------------

    def start(self, name: str, argv: Argv, **extra: str) -> Child:
        """`extra`: environment on top of the stack's (SF_EVENTS_TRANSPORT=pubsub)."""
        return self.supervisor.start(name, argv, {**self.env(), **extra})

    def start_subscriber(self, name: str = "subscriber", **extra: str) -> Child:
        return self.start(name, python_module("subscriber"), **extra)

    def start_worker(self, name: str, worker_class: str | None = None, **extra: str) -> Child:
        """With `worker_class`, each generation runs under its own RQ name, `<name>-g<n>`."""
        if worker_class is None:
            return self.start(name, python_module("worker"), **extra)
        args = ("--worker-class", worker_class)
        return self.start(name, lambda gen: python_module("worker", *args, "--name", gen), **extra)

    def start_health(self, port: int) -> Child:
        argv = python_module("healthcheck", "--host", "127.0.0.1", "--port", str(port))
        return self.start("health", argv)

    # --- readiness ---------------------------------------------------------------------------

    def wait_ready(self, checks: Mapping[str, Callable[[], bool]], timeout: float) -> None:
        """Until every check holds; NotReady as soon as a service dies, or at the timeout."""
        waiting = dict(checks)
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            waiting = {name: ok for name, ok in waiting.items() if not ok()}
            if not waiting:
                return
            if time.monotonic() > deadline:
                tail = self.supervisor.children[-1].tail()
                raise NotReady(f"not ready after {timeout:.0f}s: {', '.join(waiting)}\n{tail}")
            time.sleep(0.2)

    def check_alive(self) -> None:
        dead = self.supervisor.dead()
        if dead:
            names = ", ".join(f"{c.name} (exit {c.returncode})" for c in dead)
            raise NotReady(f"{names} stopped unexpectedly; last lines:\n{dead[0].tail()}")

    def subscribed(self) -> bool:
        with closing(self.conn()) as conn:
            return conn.hget(keys.heartbeat_key(DEFAULT_CHANNEL), "state") == b"connected"

    def idle_workers(self) -> int:
        with closing(self.conn()) as conn:
            workers = Worker.all(connection=conn, queue=Queue(QUEUE, connection=conn))
            return sum(1 for w in workers if w.get_state() == "idle")

    def health_answers(self, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2.0):
                return True
        except urllib.error.HTTPError:
            return True  # it answered; unhealthy is fine while things start
        except (urllib.error.URLError, OSError):
            return False

    def logs(self) -> list[Path]:
        return [path for child in self.supervisor.children for path in child.logs]
