"""The pipeline on loopback for measurements 2 to 5: the kit's stack, measured.

One stack (the sandbox in this process, one database) serves the whole run; each measurement starts
the subscriber and worker processes it needs and stops them. Latency is injected per backend call
through the sandbox's FaultBook, and every delay it applies is counted here.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from rq import Queue, Worker
from rq.serializers import JSONSerializer
from sqlalchemy import select

from bench import rqjobs
from bench.harness import REPO_ROOT, BenchError, Run
from provisioner.kit.database import Database
from provisioner.kit.stack import QUEUE, NotReady, Stack
from provisioner.kit.supervisor import Child, Supervisor, stop_together
from sandbox.fixtures import standard_document
from shared import db
from shared.queueing import job_id_for

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


class Rig:
    def __init__(self, run: Run, stack: Stack) -> None:
        self.run = run
        self.stack = stack
        self.sandbox = stack.sandbox
        self.admin = stack.admin
        self.delays = DelayCounter(stack.sandbox.faults)
        self.conn = run.redis()
        self.queue = Queue(QUEUE, connection=self.conn, serializer=JSONSerializer)
        self._batches = 0
        self._procs = 0

    @classmethod
    def of(cls, run: Run) -> Rig:
        """The run's rig, started by the first measurement that needs it."""
        if "rig" not in run.shared:
            run.shared["rig"] = rig = cls.start(run)
            run.closers.append(rig.stack.close)
        return run.shared["rig"]

    @classmethod
    def start(cls, run: Run) -> Rig:
        settings = {"APP_ENV": "bench", "LOG_LEVEL": "INFO", "PROVISION_QUEUE": QUEUE}
        settings["SF_EVENTS_REPLAY"] = "LATEST"
        supervisor = Supervisor(os.environ, log_dir=run.work_dir, cwd=REPO_ROOT)
        stack = Stack(run.work_dir, supervisor, settings)
        stack.use_redis(run.redis_url)
        try:
            stack.use_database(Database.create(run.database_url, "bench", run.work_dir))
            stack.start_sandbox()
            stack.admin.load(standard_document(0))  # price book, `acme`, products, WHMCS
        except Exception:
            stack.close()
            raise
        run.shared["database"] = stack.database.description
        return cls(run, stack)

    def set_latency(self, seconds: float) -> None:
        for target in BACKENDS:
            self.sandbox.faults.set_latency(target, seconds)

    def clear_latency(self) -> None:
        self.sandbox.faults.clear()

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

    def start_subscriber(self, **extra: str) -> Child:
        """`extra`: environment on top of the rig's (SF_EVENTS_TRANSPORT=pubsub)."""
        proc = self.stack.start_subscriber(self._name("subscriber"), **extra)
        self._ready([proc], {"the subscriber": self.stack.subscribed}, 30)
        return proc

    def start_workers(self, count: int, worker_class: str = "simple") -> list[Child]:
        """`count` idle `python -m worker` processes, registered with RQ, waiting for jobs."""
        expected = Worker.count(connection=self.conn, queue=self.queue) + count
        procs = [self.stack.start_worker(self._name("worker"), worker_class) for _ in range(count)]
        ready = {f"{count} workers": lambda: self.stack.idle_workers() >= expected}
        self._ready(procs, ready, 30 + 5 * count)
        return procs

    def _ready(self, procs: list[Child], checks: dict[str, Any], timeout: float) -> None:
        try:
            self.stack.wait_ready(checks, timeout)
        except NotReady:
            stop_together(procs)
            raise

    def _name(self, service: str) -> str:
        self._procs += 1
        return f"{service}-{self._procs}"

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

    def step_medians(self, order_ids: Sequence[str]) -> dict[str, float]:
        """Median duration_ms of each step the worker recorded for these orders."""
        query = (
            select(db.fulfilment_steps.c.step, db.fulfilment_steps.c.duration_ms)
            .join(db.fulfilments, db.fulfilments.c.id == db.fulfilment_steps.c.fulfilment_id)
            .where(db.fulfilments.c.sf_order_id.in_(list(order_ids)))
            .order_by(db.fulfilment_steps.c.id)
        )
        assert self.stack.database is not None
        with self.stack.database.engine.connect() as conn:
            rows = conn.execute(query).all()
        by_step: dict[str, list[float]] = {}
        for step, duration in rows:
            by_step.setdefault(step, []).append(duration)
        return {step: statistics.median(values) for step, values in by_step.items()}


def calls_between(before: dict[str, Any], after: dict[str, Any]) -> Counter[str]:
    """Backend calls by kind (`sf.<kind>`, `sf.token`, `whmcs.<action>`) between two snapshots
    of the emulators' counters; kinds not called are left out."""
    return _calls(after) - _calls(before)


def _calls(counters: dict[str, Any]) -> Counter[str]:
    sf = counters["salesforce"]
    calls = Counter({f"sf.{kind}": n for kind, n in sf["api_calls"].items()})
    calls["sf.token"] = sf["logins"]
    calls.update({f"whmcs.{action}": n for action, n in counters["whmcs"].items()})
    return calls


def job_id(event: dict[str, Any]) -> str:
    header = event.get("event") or {}
    return job_id_for(header.get("EventUuid"), header.get("replayId"))
