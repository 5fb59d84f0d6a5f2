"""The reaper: finds jobs whose worker died (kill -9, OOM, node loss) and fails their orders.

A running job keeps its order's lease alive and is listed in `prov:inflight`. An entry whose lease
has lapsed belongs to a dead process. The reaper takes the lease, marks the Salesforce order Failed
with WORKER_LOST (unless it is not Activating any more), records that in the database, moves the
RQ job from the started to the failed registry so rq-dashboard shows it, and drops the entry.

A worker can also die after RQ dequeued a job and before the job took the lease (or the job can
fail to take it: Redis gone). `prov:inflight` never sees such a job, so the reaper also reads RQ's
own registries for the queue: a job that RQ lists as started, or recently failed, at least
STALE_AFTER = 2 x ORDER_LOCK_TTL after it started, whose order has no lease and no in-flight
entry, and that left no settled attempt row, never got to work. The reaper takes the lease and
fails the order if it still reads Activating without a WHMCS order id (WORKER_LOST, or the code
the job recorded when it could not settle the order itself); otherwise it leaves the order alone.

Detection bounds (each worker process scans every REAPER_INTERVAL = min(10 s, TTL/3)), before the
one Salesforce call; with the default ORDER_LOCK_TTL=30:
- a job that died holding the lease: the lease lapses at most ORDER_LOCK_TTL after the death (it
  was renewed every TTL/3): ORDER_LOCK_TTL + REAPER_INTERVAL, 40 s;
- a job that never took the lease: STALE_AFTER + REAPER_INTERVAL after it started, 70 s; if RQ
  moved it to its failed registry first, one REAPER_INTERVAL after that.
Both need at least one `python -m worker` running on the queue.

It also delivers the outcomes Salesforce did not take (`prov:outbox`, see shared/outbox.py): each
due entry is PATCHed under the order's lease, so never while a job runs on the order, and only
while the order still reads Activating; a refusal (timeout, 5xx, 403, a 400 validation rule,
SF_AUTH) puts it back with a longer wait (5 s doubling to 5 min). An outcome the reaper itself
cannot deliver when it settles an abandoned job goes there too, and an order whose outcome waits
there is never failed WORKER_LOST over it.

It runs as a thread in every `python -m worker` process rather than between jobs: a loop between
jobs would stall behind a long job, and RQ's dequeue blocks for minutes when the queue is idle.
Several reapers are safe together: the order's lease lets only one act on an order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from shared import keys, outbox, queueing
from shared.errors import (
    ProvisioningError,
    WorkerLost,
    short_message,
)
from shared.salesforce import SalesforceClient
from shared.servertime import server_now
from shared.sfid import is_valid_id, to18
from worker import clock as worker_clock
from worker import lease as leases
from worker import steps
from worker.periodic import Periodic
from worker.records import ACTIVATED, FAILED, RUNNING, SKIPPED, Attempt, Records

log = logging.getLogger(__name__)

MAX_INTERVAL = 10.0
# How far back the failed registry is read for jobs RQ itself failed before the reaper saw them
# (by the registry score, which is the failure time + queueing.FAILURE_TTL). RQ moves an abandoned
# job during a worker's maintenance, and every worker runs a reaper: one pass would do; a day
# covers a cleanup run by some other process while no worker was up.
RECENT_FAILURES = 24 * 3600.0
NOT_UPDATED = "not updated"  # the Salesforce status we report when the PATCH was refused


def interval_for(order_lock_ttl: float) -> float:
    return max(0.2, min(MAX_INTERVAL, order_lock_ttl / 3))


def stale_after(order_lock_ttl: float) -> float:
    """Seconds after its start by which a live job has long taken its order's lease."""
    return 2 * order_lock_ttl


def detection_bound(order_lock_ttl: float) -> float:
    """Seconds from a worker's death to its order being failed (before the Salesforce call)."""
    return order_lock_ttl + interval_for(order_lock_ttl)


def detection_bound_before_lease(order_lock_ttl: float) -> float:
    """Seconds from the start of a job that never took its lease to its order being failed."""
    return stale_after(order_lock_ttl) + interval_for(order_lock_ttl)


@dataclass(frozen=True)
class LostJob:
    """An RQ job that may have died before taking its order's lease."""

    job_id: str
    order_id: str
    started_at: float  # epoch seconds (RQ's start, or its enqueue when it never started)
    worker: str

    def entry(self) -> leases.InflightEntry:
        return leases.InflightEntry(self.job_id, "", self.started_at, self.worker)


class Reaper(Periodic):
    def __init__(
        self,
        connection: redis.Redis,
        records: Records,
        salesforce: SalesforceClient,
        order_lock_ttl: float,
        secrets: tuple[str, ...] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        queue_name: str | None = None,
    ) -> None:
        self.redis = connection
        self.records = records
        self.salesforce = salesforce
        self.ttl = order_lock_ttl
        self.interval = interval_for(order_lock_ttl)
        self.secrets = secrets
        self.clock = clock
        self.queue_name = queue_name  # None: prov:inflight only
        self._done_jobs: dict[str, float] = {}  # RQ jobs already judged -> when (epoch seconds)
        super().__init__("reaper", self.run_once, self.interval, "Reaper pass failed")

    def run_once(self, now: float | None = None) -> list[str]:
        """One scan of prov:inflight, then of the queue's RQ registries (judged as at `now`,
        epoch seconds), then of prov:outbox; returns the orders whose abandoned job was dealt
        with or whose waiting outcome Salesforce took."""
        now = server_now(self.redis) if now is None else now
        reaped = []
        for order_id, raw in leases.entries(self.redis).items():
            if leases.lease_exists(self.redis, order_id):
                continue  # its job is alive (or another reaper is on it)
            if self._reap(order_id, raw):
                reaped.append(order_id)
        if self.queue_name:
            reaped += self._sweep_jobs(now)
        return reaped + self.deliver(now)

    # --- prov:outbox: outcomes Salesforce did not take ---

    def deliver(self, now: float) -> list[str]:
        """PATCH every waiting outcome that is due, each under its order's lease (so never
        while a job runs on the order); returns the orders Salesforce took an outcome for."""
        delivered = []
        for order_id, raw in outbox.entries(self.redis).items():
            waiting = outbox.Waiting.loads(raw)
            if waiting is None or not is_valid_id(order_id, "Order"):
                log.error("Dropping an unreadable outbox entry", extra={"entry": repr(raw)[:200]})
                outbox.remove(self.redis, order_id, raw)
                continue
            if not outbox.due(waiting, now) or leases.lease_exists(self.redis, order_id):
                continue
            lease = leases.Lease(self.redis, order_id, self.ttl)
            if not lease.acquire():
                continue
            try:
                # Renewed meanwhile: a Salesforce call (a token refresh, a slow reply) can outlast
                # the TTL, and then a second reaper (or a new job) would take the order too.
                with lease.kept_alive():
                    if self.redis.hget(keys.OUTBOX, order_id) != raw:
                        continue  # a job delivered its own outcome meanwhile, or another reaper did
                    if self._deliver_one(order_id, raw, waiting, now):
                        delivered.append(order_id)
            finally:
                lease.release()
        return delivered

    def _deliver_one(self, order_id: str, raw: bytes, waiting: outbox.Waiting, now: float) -> bool:
        try:
            state = self._patch_outcome(order_id, waiting)
        except (ProvisioningError, redis.RedisError) as exc:  # Redis: the shared token cache
            again = outbox.refused_again(waiting, now, _code(exc))
            outbox.put(self.redis, order_id, again)
            log.warning(
                "Outcome still not taken by Salesforce; will retry",
                extra={
                    "order_id": order_id,
                    "salesforce_status": waiting.status,
                    "update_error_code": again.last_error,
                    "attempts": again.attempts,
                    "retry_in_s": round(again.next_at - now, 1),
                },
            )
            return False
        outbox.remove(self.redis, order_id, raw)
        log.log(
            logging.INFO if state == waiting.status else logging.WARNING,
            "Outcome delivered to Salesforce"
            if state == waiting.status
            else "Waiting outcome dropped: the order no longer reads Activating",
            extra={
                "order_id": order_id,
                "job_id": waiting.job_id,
                "outcome": waiting.status,
                "error_code": waiting.code or None,
                "salesforce_status": state,
                "attempts": waiting.attempts + 1,
                "waited_s": round(now - waiting.first_at, 1),
            },
        )
        return True

    def _patch_outcome(self, order_id: str, waiting: outbox.Waiting) -> str:
        """PATCH the outcome if the order still reads Activating; its status afterwards."""
        status = self._status(order_id)
        if status != steps.ACTIVATING:
            return status  # finished after all, or changed by hand: leave it alone
        if waiting.status == steps.ACTIVATED and waiting.whmcs_order_id:
            steps.sf_success_update(self.salesforce, order_id, waiting.whmcs_order_id)
        else:
            steps.sf_failure_update(self.salesforce, order_id, waiting.code, waiting.message)
        return waiting.status

    def _status(self, order_id: str) -> str:
        records = self.salesforce.query(
            f"SELECT Id, Activation_Status__c FROM Order WHERE Id = '{order_id}'"
        )  # order_id was checked with is_valid_id by the caller
        if not records:
            return "not found"
        return str(records[0].get("Activation_Status__c") or "empty")

    # --- prov:inflight: jobs that died holding the lease ---

    def _reap(self, order_id: str, raw: bytes) -> bool:
        lease = leases.Lease(self.redis, order_id, self.ttl)
        if not lease.acquire():
            return False
        try:
            with lease.kept_alive():  # renewed: see deliver()
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

    # --- RQ's registries: jobs that never took the lease ---

    def _sweep_jobs(self, now: float) -> list[str]:
        self._done_jobs = {j: t for j, t in self._done_jobs.items() if now - t < RECENT_FAILURES}
        reaped = []
        for job_id in self._job_ids(now):
            lost = self._lost_job(job_id, now)
            if lost is not None and self._reap_job(lost, now):
                reaped.append(lost.order_id)
        return reaped

    def _job_ids(self, now: float) -> list[str]:
        """Started jobs, and jobs failed within RECENT_FAILURES, not judged yet."""
        assert self.queue_name is not None
        started = StartedJobRegistry(
            self.queue_name, connection=self.redis, serializer=JSONSerializer
        )
        failed = FailedJobRegistry(
            self.queue_name, connection=self.redis, serializer=JSONSerializer
        )
        since = now + queueing.FAILURE_TTL - RECENT_FAILURES
        recent: list[bytes] = self.redis.zrangebyscore(failed.key, since, "+inf")  # type: ignore[assignment]
        ids = started.get_job_ids(cleanup=False) + [i.decode() for i in recent]
        return [i for i in dict.fromkeys(ids) if i not in self._done_jobs]

    def _lost_job(self, job_id: str, now: float) -> LostJob | None:
        """The job, if it is old enough to have taken its lease; None to skip it."""
        try:
            job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
            payload = job.args[0] if job.args else None
        except NoSuchJobError:
            self._done_jobs[job_id] = now
            return None
        except (DeserializationError, ValueError, TypeError) as exc:  # not a job of ours
            log.warning(
                "Reaper skips an unreadable job", extra={"job_id": job_id, "error": repr(exc)}
            )
            self._done_jobs[job_id] = now
            return None
        lost = describe_job(job, payload)
        if lost is None:
            self._done_jobs[job_id] = now  # no valid order id: nothing to fail in Salesforce
            return None
        # RQ stamped started_at by the worker's clock: judge it on the server's (worker/clock.py).
        started_at = lost.started_at - worker_clock.offset_of(self.redis, lost.worker)
        return lost if now - started_at >= stale_after(self.ttl) else None

    def _reap_job(self, lost: LostJob, now: float) -> bool:
        if self._order_is_held(lost.order_id):
            return False  # a job holds the order, or the in-flight scan will deal with it
        if not unsettled(self.records.by_job(lost.order_id, lost.job_id)):
            self._done_jobs[lost.job_id] = now  # it ran and recorded its outcome
            return False
        lease = leases.Lease(self.redis, lost.order_id, self.ttl)
        if not lease.acquire():
            return False
        try:
            with lease.kept_alive():  # renewed: see deliver()
                if self.redis.hexists(keys.INFLIGHT, lost.order_id):
                    return False
                if not self._settle(lost.order_id, lost.entry(), before_lease=True):
                    return False  # Salesforce unreachable: try again next pass
                self._done_jobs[lost.job_id] = now
                return True
        finally:
            lease.release()

    def _order_is_held(self, order_id: str) -> bool:
        return bool(self.redis.hexists(keys.INFLIGHT, order_id)) or leases.lease_exists(
            self.redis, order_id
        )

    # --- settling one job's order (the caller holds the order's lease) ---

    def _settle(
        self, order_id: str, entry: leases.InflightEntry, before_lease: bool = False
    ) -> bool:
        attempt = self.records.by_job(order_id, entry.job_id)
        if not unsettled(attempt):
            assert attempt is not None
            # The job recorded its outcome (and so updated Salesforce) before it died.
            self._fail_rq_job(entry, f"worker stopped after the job ended ({attempt.status})")
            return True
        waiting = outbox.Waiting.loads(self.redis.hget(keys.OUTBOX, order_id) or b"")
        if waiting is not None:
            # The job's outcome waits in prov:outbox: it is delivered from there, never
            # overwritten with WORKER_LOST (an Activated one least of all).
            self._record(order_id, entry, attempt, _waiting_values(waiting))
            self._fail_rq_job(entry, f"outcome {waiting.status} waits for delivery")
            return True
        code, message = outcome_to_deliver(attempt, entry, before_lease)
        message = short_message(message, self.secrets)
        note = message
        try:
            state = self._mark_failed(order_id, code, message)
        except (ProvisioningError, redis.RedisError) as exc:  # Redis: the shared token cache
            # Not taken (down, refused, login failing): kept for delivery with back-off.
            waiting = outbox.first(
                steps.FAILED,
                time.time(),
                _code(exc),
                code=code,
                message=message,
                job_id=entry.job_id,
            )
            outbox.put(self.redis, order_id, waiting)
            state = f"{NOT_UPDATED}: {_code(exc)}"
            note = short_message(f"{message} [Salesforce {state} yet; the reaper delivers it]")
        values = closing_values(entry.job_id, attempt, state, code, note, not before_lease)
        self._record(order_id, entry, attempt, values)
        self._fail_rq_job(entry, f"{code}: {message}")
        # WORKER_LOST: the job died. Any other code: the job's own failure, which Salesforce or
        # Redis did not take at the time, delivered now.
        lost = code == WorkerLost.code
        if values.get("status") == ACTIVATED:
            message_text = "Activated order recorded by the reaper"  # e.g. the database was down
        elif lost:
            message_text = "Abandoned job reaped"
        else:
            message_text = "Job failure delivered to Salesforce by the reaper"
        log.log(
            logging.INFO if values.get("status") == ACTIVATED else logging.ERROR,
            message_text,
            extra={
                "order_id": order_id,
                "job_id": entry.job_id,
                "worker": entry.worker,
                "error_code": code,
                "salesforce_status": state,
                "step": attempt.step if attempt else "",
                "lease_taken": not before_lease,
                "seconds_since_start": round(server_now(self.redis) - entry.started_at, 1),
            },
        )
        return True

    def _mark_failed(self, order_id: str, code: str, message: str) -> str:
        """PATCH the order Failed if it still reads Activating; returns its status afterwards."""
        records = self.salesforce.query(
            "SELECT Id, Activation_Status__c, WHMCS_Order_ID__c FROM Order "
            f"WHERE Id = '{order_id}'"  # validated with is_valid_id by the caller
        )
        if not records:
            return "not found"
        status = str(records[0].get("Activation_Status__c") or "empty")
        if status != steps.ACTIVATING:
            # Finished after all (or changed by hand): leave it alone. Activating with
            # WHMCS_Order_ID__c set is a Retry the dead job was finishing: it fails like any.
            return status
        steps.sf_failure_update(self.salesforce, order_id, code, message)
        return steps.FAILED

    def _record(
        self,
        order_id: str,
        entry: leases.InflightEntry,
        attempt: Attempt | None,
        values: dict[str, Any],
    ) -> None:
        now = self.clock()
        if attempt is None:  # the job died before it wrote its attempt row
            attempt = self.records.begin(
                order_id=order_id, job_id=entry.job_id, worker=entry.worker, now=now
            )
        self.records.save(attempt.id, finished_at=now, **values)

    def _fail_rq_job(self, entry: leases.InflightEntry, reason: str) -> bool:
        return fail_started_job(self.redis, entry.job_id, reason)


def _code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, ProvisioningError) else "EREDIS"


def _waiting_values(waiting: outbox.Waiting) -> dict[str, Any]:
    status = ACTIVATED if waiting.status == steps.ACTIVATED else FAILED
    note = f"{waiting.status} waits for delivery to Salesforce ({waiting.last_error})"
    return {
        "status": status,
        "error_code": waiting.code or waiting.last_error,
        "error_message": short_message(f"{waiting.message} [{note}]".lstrip(" ")),
    }


def describe_job(job: Job, payload: Any) -> LostJob | None:
    """What the reaper needs of an RQ job; None when it names no valid Order id."""
    raw = payload.get("order_id") if isinstance(payload, dict) else None
    if not isinstance(raw, str) or not is_valid_id(raw, "Order"):
        return None
    started = job.started_at or job.enqueued_at
    if started is None:
        return None
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    return LostJob(
        job_id=job.id,
        order_id=to18(raw),
        started_at=started.timestamp(),
        worker=job.worker_name or "",
    )


def unsettled(attempt: Attempt | None) -> bool:
    """No row, or a row still `running`: nobody has delivered this job's outcome to the order."""
    return attempt is None or attempt.status == RUNNING


def outcome_to_deliver(
    attempt: Attempt | None, entry: leases.InflightEntry, before_lease: bool
) -> tuple[str, str]:
    """The code and message for the order: the job's own, when it recorded one it could not
    deliver (it could not take the lease); WORKER_LOST otherwise."""
    if attempt is not None and attempt.error_code:
        return attempt.error_code, attempt.error_message or attempt.error_code
    if before_lease:
        return WorkerLost.code, _lost_before_lease_message(entry)
    return WorkerLost.code, _lost_message(entry, attempt)


def closing_values(
    job_id: str, attempt: Attempt | None, state: str, code: str, message: str, lease_taken: bool
) -> dict[str, Any]:
    """How the reaper closes the job's attempt row, given the order's status afterwards."""
    if state == steps.ACTIVATED and lease_taken:
        return {"status": ACTIVATED}  # it got that far before it died
    left_alone = state != steps.FAILED and not state.startswith(NOT_UPDATED)
    if attempt is None and not lease_taken and left_alone:
        # A job with no row on an order that was not Activating: it did nothing. The row says so,
        # and no later pass judges the job again.
        left = f"job {job_id} left no attempt; the order reads {state}: left alone"
        return {"status": SKIPPED, "error_message": left}
    return {"status": FAILED, "error_code": code, "error_message": message}


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


def _lost_before_lease_message(entry: leases.InflightEntry) -> str:
    worker = f"worker {entry.worker}" if entry.worker else "its worker"
    return (
        f"{worker} stopped before job {entry.job_id} took the order; nothing was sent to WHMCS; "
        "Provision / Retry"
    )
