"""The pipeline on loopback for measurements 2 to 5: the sandbox, a database and our services.

One sandbox (in this process) and one database serve the whole run; each measurement starts the
subscriber and worker processes it needs and stops them. Latency is injected per backend call
through the sandbox's FaultBook, and every delay it applies is counted here.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rq import Queue, Worker
from rq.serializers import JSONSerializer
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from bench import rqjobs
from bench.harness import BenchError, Run, need
from bench.procs import Proc
from sandbox.http_server import wait_until
from shared import db, keys
from shared.config import DEFAULT_CHANNEL
from shared.connections import database_engine
from shared.queueing import job_id_for

QUEUE = "provisioning"
BACKENDS = ("sf.*", "whmcs.*")  # every Salesforce call (token included) and every WHMCS action


class DelayCounter:
    """Wraps a FaultBook's latency lookup to count the delays the emulators actually apply."""

    def __init__(self, faults: Any) -> None:
        self._lookup = faults.latency
        self._lock = threading.Lock()
        self.count = 0
        self.seconds = 0.0
        faults.latency = self._counted

    def _counted(self, target: str) -> float:
        seconds = self._lookup(target)
        if seconds > 0:
            with self._lock:
                self.count += 1
                self.seconds += seconds
        return seconds

    def snapshot(self) -> tuple[int, float]:
        with self._lock:
            return self.count, self.seconds


@dataclass
class Database:
    url: str
    description: str
    drop_url: str | None = None  # the server's admin URL, when the bench created the database
    name: str = ""

    @classmethod
    def create(cls, admin_url: str, work_dir: Path) -> Database:
        """A fresh PostgreSQL database (dropped at the end), or SQLite if asked or unreachable."""
        if admin_url.startswith("sqlite"):
            return cls._sqlite(work_dir, "SQLite (asked for)")
        name = f"bench_{uuid.uuid4().hex[:10]}"
        try:
            admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                version = conn.execute(text("SHOW server_version")).scalar()
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            admin.dispose()
        except SQLAlchemyError as exc:
            reason = f"SQLite, because PostgreSQL is unreachable ({type(exc).__name__})"
            return cls._sqlite(work_dir, reason)
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        return cls(url, f"PostgreSQL {version}", admin_url, name)

    @classmethod
    def _sqlite(cls, work_dir: Path, description: str) -> Database:
        return cls(f"sqlite:///{work_dir / 'bench.db'}", description)

    def migrate(self) -> None:
        engine = database_engine(self.url)
        db.upgrade(engine)
        engine.dispose()

    def drop(self) -> None:
        if not self.drop_url:
            return
        admin = create_engine(self.drop_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        admin.dispose()


class Rig:
    def __init__(self, run: Run, sandbox: Any, admin: Any, database: Database) -> None:
        self.run = run
        self.sandbox = sandbox
        self.admin = admin
        self.database = database
        self.delays = DelayCounter(sandbox.faults)
        self.conn = run.redis()
        self.queue = Queue(QUEUE, connection=self.conn, serializer=JSONSerializer)
        self._batches = 0
        self._procs = 0

    @classmethod
    def of(cls, run: Run) -> Rig:
        """The run's rig, started by the first measurement that needs it."""
        if "rig" not in run.shared:
            rig = cls.start(run)
            run.shared["rig"] = rig
            run.closers.append(rig.close)
        return run.shared["rig"]

    @classmethod
    def start(cls, run: Run) -> Rig:
        for module in ("subscriber.main", "worker.main", "worker.jobs"):
            need(module)
        sandbox_app = need("sandbox.app", "Sandbox")
        client = need("sandbox.client", "SandboxAdmin")
        fixtures = need("sandbox.fixtures", "standard_document")
        database = Database.create(run.database_url, run.work_dir)
        try:
            database.migrate()
            sandbox = sandbox_app.Sandbox.start(run.work_dir / "sandbox")
        except Exception:
            database.drop()
            raise
        admin = client.SandboxAdmin(sandbox.admin_url)
        rig = cls(run, sandbox, admin, database)
        try:
            admin.load(fixtures.standard_document(0))  # price book, `acme`, products, WHMCS
        except Exception:
            rig.close()
            raise
        run.shared["database"] = database.description
        return rig

    def close(self) -> None:
        self.admin.close()
        self.sandbox.stop()
        self.database.drop()

    def env(self) -> dict[str, str]:
        return {
            **self.sandbox.env,
            "APP_ENV": "bench",
            "LOG_LEVEL": "INFO",
            "REDIS_URL": self.run.redis_url,
            "DATABASE_URL": self.database.url,
            "PROVISION_QUEUE": QUEUE,
            "SF_EVENTS_ENABLED": "true",
            "SF_EVENTS_REPLAY": "LATEST",
        }

    # --- latency ------------------------------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        for target in BACKENDS:
            self.sandbox.faults.set_latency(target, seconds)

    def clear_latency(self) -> None:
        self.sandbox.faults.clear()

    # --- orders -------------------------------------------------------------------------------

    def new_orders(self, count: int) -> list[str]:
        """`count` fresh Draft orders of one Fibre 100 line for the account `acme`."""
        self._batches += 1
        refs = [f"b{self._batches}-o{n}" for n in range(count)]
        orders = [
            {
                "ref": ref,
                "account": "acme",
                "Status": "Draft",
                "items": [{"product": "fibre100", "Quantity": 1, "UnitPrice": 50.0}],
            }
            for ref in refs
        ]
        loaded = self.admin.load({"salesforce": {"orders": orders}})["refs"]
        return [loaded[ref] for ref in refs]

    def approve(self, order_id: str) -> str:
        """The approval Flow for one order; returns the job id the subscriber will use."""
        return job_id(self.admin.approve(order_id))

    def activated(self, order_ids: Iterable[str]) -> int:
        wanted = set(order_ids)
        return sum(
            1
            for order in self.admin.orders()
            if order.get("Id") in wanted and order.get("Activation_Status__c") == "Activated"
        )

    # --- processes ----------------------------------------------------------------------------

    def start_subscriber(self, **extra: str) -> Proc:
        """`extra`: environment on top of the rig's (SF_EVENTS_TRANSPORT=pubsub)."""
        proc = Proc.python(["subscriber"], self._log("subscriber"), {**self.env(), **extra})
        heartbeat = keys.heartbeat_key(DEFAULT_CHANNEL)
        if not wait_until(lambda: self.conn.hget(heartbeat, "state") == b"connected", 30):
            proc.stop()
            raise BenchError(f"the subscriber did not connect; log tail:\n{proc.tail()}")
        return proc

    def start_workers(self, count: int, worker_class: str = "simple") -> list[Proc]:
        """`count` idle `python -m worker` processes, registered with RQ, waiting for jobs."""
        before = Worker.count(connection=self.conn, queue=self.queue)
        procs = [
            Proc.python(["worker", "--worker-class", worker_class], self._log("worker"), self.env())
            for _ in range(count)
        ]
        expected = before + count
        if not wait_until(lambda: self._idle_workers() >= expected, 30 + 5 * count):
            stop_all(procs)
            raise BenchError(f"workers did not come up; log tail:\n{procs[0].tail()}")
        return procs

    def _idle_workers(self) -> int:
        workers = Worker.all(connection=self.conn, queue=self.queue)
        return sum(1 for w in workers if w.get_state() == "idle")

    def _log(self, name: str) -> Path:
        self._procs += 1
        return self.run.work_dir / f"{name}-{self._procs}.log"

    # --- jobs ---------------------------------------------------------------------------------

    def wait_jobs(self, job_ids: Sequence[str], timeout: float) -> list[rqjobs.JobTimes]:
        """Wait until every job has finished or failed; their RQ timings."""
        done = ("finished", "failed", "stopped", "canceled")
        deadline = time.monotonic() + timeout
        while True:
            times = rqjobs.fetch_times(self.conn, job_ids)
            if all(t.status in done for t in times):
                return times
            if time.monotonic() > deadline:
                waiting = [t.job_id for t in times if t.status not in done]
                raise BenchError(f"{len(waiting)} jobs not done within {timeout:.0f}s")
            time.sleep(0.02)

    def counters(self) -> dict[str, Any]:
        return self.admin.counters()

    def step_medians(self, order_ids: Sequence[str]) -> dict[str, float]:
        """Median duration_ms of each step the worker recorded for these orders."""
        query = (
            select(db.fulfilment_steps.c.step, db.fulfilment_steps.c.duration_ms)
            .join(db.fulfilments, db.fulfilments.c.id == db.fulfilment_steps.c.fulfilment_id)
            .where(db.fulfilments.c.sf_order_id.in_(list(order_ids)))
            .order_by(db.fulfilment_steps.c.id)
        )
        engine = database_engine(self.database.url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(query).all()
        finally:
            engine.dispose()
        by_step: dict[str, list[float]] = {}
        for step, duration in rows:
            by_step.setdefault(step, []).append(duration)
        return {step: statistics.median(values) for step, values in by_step.items()}


def job_id(event: dict[str, Any]) -> str:
    header = event.get("event") or {}
    return job_id_for(header.get("EventUuid"), header.get("replayId"))


def stop_all(procs: Sequence[Proc]) -> None:
    """Stop processes together (SIGTERM to all first): warm shutdown, then SIGKILL stragglers."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.stop()
