"""The reconciler: Salesforce's own list of Activating orders, compared with what is in hand.

The event stream alone cannot promise that every approval is fulfilled: a deployment with no
stored replay id, a replay id outside retention, a Redis that lost its last second of writes with
the jobs, an outage longer than the 72 h retention, a Flow that set Activating and never published.
Every RECONCILE_INTERVAL, one process in the whole system (the holder of the leader lock
`prov:reconciler:leader`) runs ONE SOQL query for Orders Activating since before now -
RECONCILE_AFTER. Each one with no live job (no order lease, no `prov:inflight` entry, no queued or
started RQ job naming it) and no outcome waiting for delivery (`prov:outbox`) gets one job, with
the same payload as an event's and a job id per order and approval (`rec-<OrderId>-<its
LastModifiedDate>`), written in one transaction with `prov:reconciled:<job id>`: two sweeps, or
two leaders during a takeover, never make two jobs for one approval. The worker's guard makes a
job that races a late event safe.

Cost: one API call per interval whatever the volume; at most PAGE orders are reconciled per
sweep, oldest first, and the rest in the following sweeps. Bound: an order that enters Activating
reaches a terminal status within RECONCILE_AFTER + RECONCILE_INTERVAL + the job's own time, even
if its event never comes (the leader lock's TTL adds to that only when the leader dies).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry

from shared import keys, queueing
from shared.jobpayload import JobPayload
from shared.salesforce import SalesforceClient
from shared.sfid import is_valid_id, to18
from worker.periodic import Periodic

log = logging.getLogger(__name__)

PAGE = 200  # orders per sweep; more wait for the next sweep, oldest first
META_CHUNK = 1000  # job metas read per round trip
POLL = 5.0  # seconds between the loop's turns (lock renewal); a sweep runs when due
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


# --- decisions --------------------------------------------------------------------------------


def soql_datetime(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile_soql(cutoff: datetime, limit: int = PAGE) -> str:
    """Orders Activating since before `cutoff`, oldest first."""
    return (
        "SELECT Id, LastModifiedDate FROM Order WHERE Activation_Status__c = 'Activating' "
        f"AND LastModifiedDate < {soql_datetime(cutoff)} ORDER BY LastModifiedDate ASC "
        f"LIMIT {limit}"
    )


def lock_ttl(interval: float, query_timeout: float) -> float:
    """Renewed every POLL; long enough that a sweep stuck on its one query keeps it."""
    return max(interval, POLL * 3) + query_timeout


def is_due(now: float, last_sweep: float, interval: float) -> bool:
    """A sweep is due `interval` after the last one, whichever process ran it."""
    return now - last_sweep >= interval


def normalise(order_id: Any) -> str | None:
    return to18(order_id) if isinstance(order_id, str) and is_valid_id(order_id) else None


@dataclass(frozen=True)
class Candidate:
    order_id: str
    last_modified: str


def candidates(rows: Iterable[Mapping[str, Any]]) -> list[Candidate]:
    found = []
    for row in rows:
        order_id = normalise(row.get("Id"))
        if order_id and isinstance(row.get("LastModifiedDate"), str):
            found.append(Candidate(order_id, row["LastModifiedDate"]))
    return found


def orphans(found: list[Candidate], busy: set[str], waiting: set[str]) -> list[Candidate]:
    """The orders nothing is working on and no outcome waits for: they need a job."""
    return [c for c in found if c.order_id not in busy and c.order_id not in waiting]


def _meta_order(raw: bytes | None) -> str | None:
    """The order a job's meta names (RQ stores meta with the queue's JSON serializer)."""
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        return None
    return normalise(meta.get("order_id")) if isinstance(meta, dict) else None


def parse_sf_datetime(text: str) -> datetime | None:
    try:
        return datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return None


# --- the loop ---------------------------------------------------------------------------------


class Leadership:
    """A token-checked lock with a TTL: one reconciler active in the whole system."""

    def __init__(self, connection: redis.Redis, ttl_seconds: float, holder: str) -> None:
        self.redis = connection
        self.key = keys.RECONCILER_LEADER
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.value = f"{holder}:{secrets.token_hex(4)}"

    def hold(self) -> bool:
        """Renew the lock if it is ours, else take it if free; True while we lead."""
        if self.redis.eval(_RENEW, 1, self.key, self.value, self.ttl_ms):
            return True
        return bool(self.redis.set(self.key, self.value, nx=True, px=self.ttl_ms))

    def release(self) -> None:
        self.redis.eval(_RELEASE, 1, self.key, self.value)


class Reconciler(Periodic):
    def __init__(
        self,
        connection: redis.Redis,
        salesforce: SalesforceClient,
        queue: Queue,
        *,
        interval: float,
        after: float,
        job_timeout: int,
        query_timeout: float = 30.0,
        holder: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = connection
        self.salesforce = salesforce
        self.queue = queue
        self.interval = interval
        self.after = after
        self.job_timeout = job_timeout
        self.clock = clock
        self.poll = min(POLL, interval)
        holder = holder or f"{socket.gethostname()}.{os.getpid()}"
        self.leadership = Leadership(connection, lock_ttl(interval, query_timeout), holder)
        self.started = clock()
        super().__init__("reconciler", self.tick, self.poll, "Reconciler sweep failed")

    def stop(self) -> None:
        super().stop()
        try:
            self.leadership.release()  # another worker takes over now, not after the TTL
        except redis.RedisError:
            pass

    def tick(self) -> list[str] | None:
        """Lead if we can; sweep if due. The orders given a job, or None when nothing ran."""
        if not self.leadership.hold():
            return None
        now = self.clock()
        last = self.redis.hget(keys.RECONCILER_STATE, "last_sweep_at")
        # With no sweep on record (a new deployment), the first waits one interval too: the
        # events in flight at start-up get their chance first.
        if not is_due(now, float(last) if last else self.started, self.interval):
            return None
        return self.sweep(now)

    def sweep(self, now: float) -> list[str]:
        """One SOQL query, then one job for each order Activating that nothing works on."""
        cutoff = datetime.fromtimestamp(now, UTC) - timedelta(seconds=self.after)
        self._record({"last_sweep_at": f"{now:.3f}", "holder": self.leadership.value})
        found = candidates(self.salesforce.query(reconcile_soql(cutoff)))
        if not found:
            self._record({"overdue": 0, "oldest_activating_since": "", "truncated": 0})
            return []
        todo = orphans(found, self.busy({c.order_id for c in found}), self.waiting(found))
        enqueued = [c.order_id for c in todo if self.enqueue(c)]
        self._record(self._summary(found, enqueued))
        return enqueued

    def busy(self, order_ids: set[str]) -> set[str]:
        """Orders with a lease, an in-flight entry, or a queued or started job naming them."""
        ordered = sorted(order_ids)
        with self.redis.pipeline(transaction=False) as pipe:
            for order_id in ordered:
                pipe.exists(keys.order_lock_key(order_id))
                pipe.hexists(keys.INFLIGHT, order_id)
            answers = pipe.execute()
        busy = {o for i, o in enumerate(ordered) if answers[2 * i] or answers[2 * i + 1]}
        return busy | (self.orders_in_jobs() & order_ids)

    def orders_in_jobs(self) -> set[str]:
        """Orders named by a queued or started job: only each job's meta is read (not its data),
        in pipelined chunks; run only when a sweep found candidates."""
        job_ids = self.queue.get_job_ids()
        # cleanup=False: moving expired entries is RQ's and the reaper's business, not ours.
        job_ids += StartedJobRegistry(queue=self.queue).get_job_ids(cleanup=False)
        named = set()
        for start in range(0, len(job_ids), META_CHUNK):
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids[start : start + META_CHUNK]:
                    pipe.hget(Job.key_for(job_id), "meta")
                metas = pipe.execute()
            named.update(o for o in map(_meta_order, metas) if o)
        return named

    def waiting(self, found: list[Candidate]) -> set[str]:
        with self.redis.pipeline(transaction=False) as pipe:
            for c in found:
                pipe.hexists(keys.OUTBOX, c.order_id)
            answers = pipe.execute()
        return {c.order_id for c, waits in zip(found, answers, strict=True) if waits}

    def enqueue(self, candidate: Candidate) -> bool:
        """One job per order and approval: the job and its marker in one transaction, only if
        the marker is not there (WATCH: a second leader's sweep cannot slip in between)."""
        payload = JobPayload.reconciled(candidate.order_id, candidate.last_modified)
        job_id = payload.job_id()
        marker = keys.reconciled_key(job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(marker)
                if pipe.exists(marker):
                    return False
                pipe.multi()
                queueing.enqueue_job(self.queue, payload, job_id, self.job_timeout, pipeline=pipe)
                pipe.set(marker, f"{self.clock():.3f}", ex=keys.SEEN_TTL_SECONDS)
                pipe.hincrby(keys.RECONCILER_STATE, "reconciled_total", 1)
                pipe.execute()
            except redis.WatchError:
                return False
        log.warning(
            "Reconciled order with no event",
            extra={
                "order_id": candidate.order_id,
                "job_id": job_id,
                "last_modified": candidate.last_modified,
            },
        )
        return True

    def _summary(self, found: list[Candidate], enqueued: list[str]) -> dict[str, Any]:
        oldest = parse_sf_datetime(found[0].last_modified)
        return {
            "overdue": len(found),
            "oldest_activating_since": f"{oldest.timestamp():.3f}" if oldest else "",
            "truncated": int(len(found) >= PAGE),
            "last_enqueued": len(enqueued),
            "last_enqueued_orders": json.dumps(enqueued[:20]),
        }

    def _record(self, fields: Mapping[str, Any]) -> None:
        self.redis.hset(keys.RECONCILER_STATE, mapping={k: str(v) for k, v in fields.items()})


def read_state(connection: redis.Redis) -> dict[str, str]:
    """The reconciler's hash, for health, metrics and doctor."""
    raw = connection.hgetall(keys.RECONCILER_STATE)
    return {k.decode(): v.decode() for k, v in raw.items()}
