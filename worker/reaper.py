"""The reaper: finds jobs whose worker died (kill -9, OOM, node loss) and fails their orders.

A running job keeps its order's lease alive and is listed in `prov:inflight`. An entry whose lease
has lapsed belongs to a dead process. The reaper takes the lease, marks the Salesforce order Failed
with WORKER_LOST (unless it is not Activating any more), records that in the database, moves the
RQ job from the started to the failed registry so rq-dashboard shows it, and drops the entry.

Detection bound: the lease lapses at most ORDER_LOCK_TTL after the death (it was renewed every
TTL/3), and each worker process scans every REAPER_INTERVAL = min(10 s, TTL/3): with the default
ORDER_LOCK_TTL=30 an abandoned order is Failed within 40 s (plus one Salesforce call).

It runs as a thread in every `python -m worker` process rather than between jobs: a loop between
jobs would stall behind a long job, and RQ's dequeue blocks for minutes when the queue is idle.
Several reapers are safe together: the order's lease lets only one act on an entry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from shared import keys
from shared.errors import (
    BadResponse,
    ConnectionFailed,
    HttpStatusError,
    ProvisioningError,
    UpstreamTimeout,
    WorkerLost,
    short_message,
)
from shared.salesforce import SalesforceClient
from shared.sfid import is_valid_id
from worker import lease as leases
from worker import steps
from worker.records import ACTIVATED, FAILED, RUNNING, Attempt, Records

log = logging.getLogger(__name__)

MAX_INTERVAL = 10.0


def interval_for(order_lock_ttl: float) -> float:
    return max(0.2, min(MAX_INTERVAL, order_lock_ttl / 3))


def detection_bound(order_lock_ttl: float) -> float:
    """Seconds from a worker's death to its order being failed (before the Salesforce call)."""
    return order_lock_ttl + interval_for(order_lock_ttl)


class Reaper:
    def __init__(
        self,
        connection: redis.Redis,
        records: Records,
        salesforce: SalesforceClient,
        order_lock_ttl: float,
        secrets: tuple[str, ...] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.redis = connection
        self.records = records
        self.salesforce = salesforce
        self.ttl = order_lock_ttl
        self.interval = interval_for(order_lock_ttl)
        self.secrets = secrets
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("Reaper pass failed")
            self._stop.wait(self.interval)

    def run_once(self) -> list[str]:
        """One scan of prov:inflight; returns the orders whose abandoned job was dealt with."""
        reaped = []
        for order_id, raw in leases.entries(self.redis).items():
            if leases.lease_exists(self.redis, order_id):
                continue  # its job is alive (or another reaper is on it)
            if self._reap(order_id, raw):
                reaped.append(order_id)
        return reaped

    def _reap(self, order_id: str, raw: bytes) -> bool:
        lease = leases.Lease(self.redis, order_id, self.ttl)
        if not lease.acquire():
            return False
        try:
            if self.redis.hget(keys.INFLIGHT, order_id) != raw:
                return False  # the job finished, or a newer job replaced the entry
            entry = leases.InflightEntry.loads(raw)
            if entry is None or not is_valid_id(order_id, "Order"):
                log.error(
                    "Dropping an unreadable in-flight entry", extra={"entry": repr(raw)[:200]}
                )
                leases.unregister(self.redis, order_id, raw)
                return True
            if not self._settle(order_id, entry):
                return False  # Salesforce unreachable: keep the entry, try again next pass
            leases.unregister(self.redis, order_id, raw)
            return True
        finally:
            lease.release()

    def _settle(self, order_id: str, entry: leases.InflightEntry) -> bool:
        attempt = self.records.by_job(order_id, entry.job_id)
        if attempt is not None and attempt.status != RUNNING:
            # The job recorded its outcome (and so updated Salesforce) before it died.
            self._fail_rq_job(entry, f"worker stopped after the job ended ({attempt.status})")
            return True
        message = short_message(_lost_message(entry, attempt), self.secrets)
        try:
            state = self._mark_failed(order_id, message)
        except ProvisioningError as exc:
            if _transient(exc):
                log.warning(
                    "Reaper could not update Salesforce; will retry",
                    extra={"order_id": order_id, "error_code": exc.code},
                )
                return False
            state = f"not updated: {exc.code}"
            message = short_message(f"{message} [Salesforce {state}]")
        self._record(order_id, entry, attempt, state, message)
        self._fail_rq_job(entry, f"{WorkerLost.code}: {message}")
        log.error(
            "Abandoned job reaped",
            extra={
                "order_id": order_id,
                "job_id": entry.job_id,
                "worker": entry.worker,
                "error_code": WorkerLost.code,
                "salesforce_status": state,
                "step": attempt.step if attempt else "",
                "seconds_since_start": round(time.time() - entry.started_at, 1),
            },
        )
        return True

    def _mark_failed(self, order_id: str, message: str) -> str:
        """PATCH the order Failed if it still reads Activating; returns its status afterwards."""
        records = self.salesforce.query(
            "SELECT Id, Activation_Status__c, WHMCS_Order_ID__c FROM Order "
            f"WHERE Id = '{order_id}'"  # validated with is_valid_id by the caller
        )
        if not records:
            return "not found"
        status = str(records[0].get("Activation_Status__c") or "empty")
        if status != steps.ACTIVATING or records[0].get("WHMCS_Order_ID__c"):
            return status  # finished after all (or changed by hand): leave it alone
        steps.sf_failure_update(self.salesforce, order_id, WorkerLost.code, message)
        return steps.FAILED

    def _record(
        self,
        order_id: str,
        entry: leases.InflightEntry,
        attempt: Attempt | None,
        state: str,
        message: str,
    ) -> None:
        now = self.clock()
        if attempt is None:  # the job died before it wrote its attempt row
            attempt = self.records.begin(
                order_id=order_id, job_id=entry.job_id, worker=entry.worker, now=now
            )
        if state == steps.ACTIVATED:
            self.records.save(attempt.id, status=ACTIVATED, finished_at=now)
            return
        self.records.save(
            attempt.id,
            status=FAILED,
            error_code=WorkerLost.code,
            error_message=message,
            finished_at=now,
        )

    def _fail_rq_job(self, entry: leases.InflightEntry, reason: str) -> bool:
        return fail_started_job(self.redis, entry.job_id, reason)


def fail_started_job(connection: redis.Redis, job_id: str, reason: str) -> bool:
    """Move a job RQ still lists as started to its failed registry (what RQ's own maintenance
    would do minutes later), so rq-dashboard shows it at once. False if RQ already moved it."""
    if not job_id:
        return False
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return False
    started = StartedJobRegistry(job.origin, connection=connection, serializer=JSONSerializer)
    if job_id not in started.get_job_ids(cleanup=False):
        return False
    exc_string = f"Moved to FailedJobRegistry by the reaper: {reason}"
    failed = FailedJobRegistry(job.origin, connection=connection, serializer=JSONSerializer)
    with connection.pipeline() as pipe:
        started.remove_executions(job, pipeline=pipe)
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        failed.add(job, ttl=job.failure_ttl, exc_string=exc_string, pipeline=pipe)
        Result.create_failure(job, job.failure_ttl, exc_string=exc_string, pipeline=pipe)
        pipe.execute()
    return True


def _lost_message(entry: leases.InflightEntry, attempt: Attempt | None) -> str:
    step = attempt.step if attempt and attempt.step else "start"
    text = f"worker {entry.worker} stopped during {step} (job {entry.job_id})"
    if attempt is not None and attempt.whmcs_order_id:
        text += f"; WHMCS order {attempt.whmcs_order_id} exists"
    elif attempt is not None and attempt.create_outcome_unknown:
        text += "; AddOrder outcome unknown"
    return text + "; Provision / Retry resumes without ordering twice"


def _transient(exc: ProvisioningError) -> bool:
    if isinstance(exc, UpstreamTimeout | ConnectionFailed | BadResponse):
        return True
    return isinstance(exc, HttpStatusError) and (exc.status or 0) in (429, 500, 502, 503, 504)
