"""Runs the fulfilment steps for one event, records progress, turns any error into a Failed order.

    validation -> sf_status_update -> order_details -> mapping -> payment_method
               -> whmcs_create -> whmcs_accept -> sf_success_update

An order that reads Activating with WHMCS_Order_ID__c already set (a Retry on an Activated
order) is finished instead: validation -> whmcs_create (the named order, checked to be this
order's) -> whmcs_accept -> sf_success_update; no new WHMCS order.

Exactly once: the order's lease keeps a second worker out; `fulfilments` remembers what WHMCS
was asked and answered, so a later attempt adopts the order an earlier one made instead of
ordering again (worker/ordering.py). Every failure is re-raised after the order is marked Failed,
so RQ files the job with its traceback in the failed registry. Once the success PATCH is sent,
nothing marks the order Failed. An outcome Salesforce did not take waits in `prov:outbox` for the
reaper to deliver (shared/outbox.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from rq.timeouts import JobTimeoutException
from sqlalchemy.exc import SQLAlchemyError

from shared import outbox
from shared.config import Settings
from shared.errors import (
    InvalidEvent,
    OrderNotFound,
    ProvisioningError,
    RedisUnavailable,
    WorkerLost,
    short_message,
    transient,
)
from shared.jobpayload import JobPayload
from shared.logs import bind
from shared.salesforce import SalesforceClient
from shared.whmcs import WhmcsClient
from worker import lease as leases
from worker import ordering, steps
from worker.records import ACTIVATED, FAILED, RUNNING, SKIPPED, Attempt, Records, StepRecord

log = logging.getLogger(__name__)

STEPS = (
    "validation",
    "sf_status_update",
    "order_details",
    "mapping",
    "payment_method",
    "whmcs_create",
    "whmcs_accept",
    "sf_success_update",
)


ACTIVATED_SF, FAILED_SF = steps.ACTIVATED, steps.FAILED  # Activation_Status__c values
UNKNOWN_CREATE_MARGIN = ordering.UNKNOWN_CREATE_MARGIN  # read here by bench/chaos/run.py


def _retry_later(exc: Exception) -> bool:
    return isinstance(exc, redis.RedisError) or transient(exc)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Event:
    order_id: Any  # raw OrderId__c from the platform event: never trusted
    job_id: str = ""
    event_uuid: str = ""
    replay_id: str = ""

    @classmethod
    def from_payload(cls, payload: Any, job_id: str) -> Event:
        job = JobPayload.from_payload(payload)  # the one definition (shared/jobpayload.py)
        return cls(
            order_id=job.order_id,
            job_id=job_id,
            event_uuid=(job.event_uuid or "")[:64],
            replay_id="" if job.replay_id is None else str(job.replay_id)[:32],
        )


@dataclass
class Services:
    """Everything a run talks to, built by worker/jobs.py for each job."""

    settings: Settings
    salesforce: SalesforceClient
    whmcs: WhmcsClient
    records: Records
    redis: redis.Redis
    catalogue: steps.ProductCatalogue
    worker_name: str = field(default_factory=lambda: f"{socket.gethostname()}.{os.getpid()}")
    clock: Callable[[], datetime] = _utcnow


@dataclass
class Outcome:
    outcome: str  # activated | skipped (failures raise)
    order_id: str
    reason: str = ""
    whmcs_order_id: int | None = None

    def as_result(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v not in ("", None)}


class StepNote:
    """What a step reports about itself for its log line and the step log."""

    def __init__(self) -> None:
        self.outcome = "ok"
        self.detail = ""
        self.fields: dict[str, Any] = {}

    def skipped(self, detail: str) -> None:
        self.outcome, self.detail = "skipped", detail


class Run:
    """One job's pass over one order."""

    def __init__(self, services: Services, event: Event) -> None:
        self.s = services
        self.event = event
        self.order_id = ""
        self.attempt: Attempt | None = None
        self.earlier: list[Attempt] = []
        self.lease: leases.Lease | None = None
        self.order: steps.Order | None = None
        self.whmcs_order: steps.WhmcsOrder | None = None
        self.pending: list[StepRecord] = []
        self.accepted_at: datetime | None = None
        self.interrupted = False
        self.success_sent = False  # the success PATCH went out: never mark the order Failed
        self._held: contextlib.ExitStack | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._write: Future[None] | None = None
        self.current_step = ""
        self.started = time.perf_counter()
        self._started_at = services.clock()
        self.timings: dict[str, float] = {}

    # --- the main line ---

    def execute(self) -> Outcome:
        log.info("Starting fulfillment orchestration")
        # The lease, its renewer and the in-flight entry live in `held`, which closes only after
        # a failure has been written to Salesforce: no other job can slip in between.
        with contextlib.ExitStack() as held:
            try:
                return self._execute(held)
            except Exception as exc:
                self._fail(exc)
                raise
            except BaseException:
                # SystemExit and the like: no clean ending. The in-flight entry stays, so the
                # reaper fails the order once the released lease is seen free.
                self.interrupted = True
                raise

    def _execute(self, held: contextlib.ExitStack) -> Outcome:
        self._held = held
        skip = ""
        with self.step("validation") as note:
            self.order_id = steps.validate_order_id(self.event.order_id)
            if not self._take_lease(held):
                skip = "order already in progress elsewhere"
                log.info("Order already in progress elsewhere; leaving it to that job")
            else:
                self.order = steps.read_order(
                    self.s.salesforce, self.order_id, self.s.settings.account_client_field
                )
                skip = steps.guard(self.order) or ""
                if skip:
                    log.info(f"Guard sees {skip}; leaving the order alone")
                elif self.order.whmcs_order_id:
                    log.info(
                        "Guard sees status=Activating with WHMCS_Order_ID__c set; finishing it",
                        extra={"whmcs_order_id": self.order.whmcs_order_id},
                    )
                else:
                    log.info("Guard sees status=Activating")
            if skip:
                note.skipped(skip)
        if skip:
            return self._skip(skip)
        assert self.order is not None
        if self.order.whmcs_order_id:
            self._finish_recorded(self.order)
        else:
            self._run_steps(self.order)
        return self._succeed()

    def _take_lease(self, held: contextlib.ExitStack) -> bool:
        lease = leases.Lease(self.s.redis, self.order_id, self.s.settings.order_lock_ttl)
        if not lease.acquire():
            return False
        self.lease = lease
        entry = leases.InflightEntry(
            job_id=self.event.job_id,
            token=lease.token,
            started_at=leases.server_now(self.s.redis),  # compared on other hosts: Redis's clock
            worker=self.s.worker_name,
        )
        held.callback(self._let_go, leases.register(self.s.redis, self.order_id, entry))
        held.enter_context(lease.kept_alive())
        return True

    def _let_go(self, inflight_raw: str) -> None:
        assert self.lease is not None
        try:
            if not self.interrupted:
                leases.unregister(self.s.redis, self.order_id, inflight_raw)
            self.lease.release()
        except (RedisUnavailable, redis.RedisError) as exc:
            log.warning("Could not release the order lease", extra={"error": type(exc).__name__})

    def _run_steps(self, order: steps.Order) -> None:
        sf, whmcs, settings = self.s.salesforce, self.s.whmcs, self.s.settings
        with self.step("sf_status_update") as note:
            if not steps.sf_status_update(sf, order):
                note.skipped("already Activating with no error")
        with self.step("order_details"):
            steps.order_details(order, settings.pricebook_id)
        with self.step("mapping") as note:
            self.earlier, database_client = self.s.records.prior(self.order_id, order.account_id)
            plan = steps.mapping_plan(order, database_client, self.s.catalogue)
            note.fields = {"whmcs_client_id": plan.client_id, "lines": len(plan.lines)}
        with self.step("payment_method") as note:
            gateway = steps.payment_gateway(whmcs, plan.client_id, settings.whmcs.default_gateway)
            note.fields = {"gateway": gateway}
        with self.step("whmcs_create") as note:
            self.whmcs_order, resumed = self._placement().place(
                plan, gateway, ordering.notes_for(order.number, order.id)
            )
            note.fields = ordering.ids(self.whmcs_order)
            if resumed:
                note.outcome = "resumed"
                note.detail = f"WHMCS order {self.whmcs_order.order_id} from an earlier attempt"
            ordering.check_service_count(self.whmcs_order, plan.expected_services)
        with self.step("whmcs_accept") as note:
            self._require_lease("AcceptOrder")
            if not steps.accept_order(whmcs, self.whmcs_order):
                note.skipped("WHMCS order already Active")
            self.accepted_at = self.s.clock()
        self._success_update(order)

    def _finish_recorded(self, order: steps.Order) -> None:
        """Activating with WHMCS_Order_ID__c set (a Retry on an Activated order, or one whose
        success PATCH landed unseen): no new order. Check that the named WHMCS order is this
        order's, accept it if still Pending, write Activated; else fail WHMCS_ORDER_MISMATCH."""
        with self.step("whmcs_create") as note:
            self.whmcs_order = ordering.find_recorded_order(
                self.s.whmcs, order.id, order.whmcs_order_id
            )
            note.outcome = "resumed"
            note.detail = f"WHMCS order {self.whmcs_order.order_id} named by WHMCS_Order_ID__c"
            note.fields = ordering.ids(self.whmcs_order)
            self._checkpoint_soon(**ordering.columns(self.whmcs_order))
        with self.step("whmcs_accept") as note:
            self._require_lease("AcceptOrder")
            if not steps.accept_order(self.s.whmcs, self.whmcs_order):
                note.skipped("WHMCS order already Active")
            self.accepted_at = self.s.clock()
        self._success_update(order)

    def _success_update(self, order: steps.Order) -> None:
        assert self.whmcs_order is not None
        with self.step("sf_success_update"):
            self._require_lease("the success update")
            self.success_sent = True
            steps.sf_success_update(self.s.salesforce, order.id, self.whmcs_order.order_id)
        self._outcome_delivered()

    def _placement(self) -> ordering.Placement:
        return ordering.Placement(
            whmcs=self.s.whmcs,
            order_id=self.order_id,
            earlier=self.earlier,
            write_timeout=self.s.settings.whmcs.write_timeout,
            clock=self.s.clock,
            checkpoint=self._checkpoint,
            checkpoint_soon=self._checkpoint_soon,
            require_lease=self._require_lease,
        )

    # --- endings ---

    def _succeed(self) -> Outcome:
        assert self.whmcs_order is not None
        try:
            self._checkpoint(
                status=ACTIVATED, accepted_at=self.accepted_at, finished_at=self.s.clock()
            )
        except Exception as exc:
            # Salesforce says Activated: that stands, whatever the database says. The in-flight
            # entry stays, so the reaper records the attempt once the lease is free.
            self.interrupted = True
            log.error(
                "Could not record the outcome in the database; the reaper records it",
                extra={"error_code": error_code(exc), "error": type(exc).__name__},
            )
        log.info("Activated")
        self._canonical(ACTIVATED, whmcs_order_id=self.whmcs_order.order_id)
        return Outcome(ACTIVATED, self.order_id, whmcs_order_id=self.whmcs_order.order_id)

    def _skip(self, reason: str) -> Outcome:
        self._finish_record(status=SKIPPED, error_message=reason)
        self._canonical(SKIPPED, reason=reason)
        return Outcome(SKIPPED, self.order_id, reason=reason)

    def _fail(self, exc: Exception) -> None:
        code = error_code(exc)
        message = short_message(_message(exc), self.s.settings.secrets())
        if self.success_sent:
            self._success_undelivered(exc, code, message)
            return
        status = FAILED
        note = message
        if self._may_mark_failed(exc):
            undelivered = self._mark_failed(code, message)
            if undelivered is None:
                self._outcome_delivered()
            elif self._keep(
                outbox.first(
                    FAILED_SF,
                    time.time(),
                    error_code(undelivered),
                    code=code,
                    message=message,
                    job_id=self.event.job_id,
                )
            ):
                note = (
                    f"{message} [Salesforce not updated yet: {error_code(undelivered)}; "
                    "the reaper delivers it]"
                )
            elif _retry_later(undelivered):
                # No outbox either (Redis down): the attempt stays `running` with its code and
                # the reaper delivers it from RQ's failed registry (worker/reaper.py).
                status = RUNNING
            else:
                note = f"{message} [Salesforce not updated: {error_code(undelivered)}]"
        elif self.order_id and self.lease is None:
            # Taking the lease itself failed (Redis): whether the order was ours to touch is
            # unknown, so it may stay Activating. The attempt stays `running`, with its code:
            # the reaper settles it once it can take the lease (worker/reaper.py).
            status = RUNNING
        extra = {"accepted_at": self.accepted_at} if self.accepted_at else {}
        note = short_message(note)
        self._finish_record(status=status, error_code=code, error_message=note, **extra)
        self._canonical(FAILED, error_code=code, error_message=message)

    def _success_undelivered(self, exc: Exception, code: str, message: str) -> None:
        """The success PATCH was sent and not confirmed (timeout, 5xx, refusal): the order is
        Activated in WHMCS and may already read so in Salesforce. Never Failed: the Activated
        outcome waits in the outbox until Salesforce takes it."""
        assert self.whmcs_order is not None
        whmcs_order_id = self.whmcs_order.order_id
        kept = self._keep(
            outbox.first(
                ACTIVATED_SF,
                time.time(),
                code,
                whmcs_order_id=whmcs_order_id,
                job_id=self.event.job_id,
            )
        )
        note = short_message(
            f"WHMCS order {whmcs_order_id} accepted; Salesforce did not confirm Activated: "
            f"{message}" + ("; the reaper delivers it" if kept else "")
        )
        extra = {"accepted_at": self.accepted_at} if self.accepted_at else {}
        self._finish_record(status=ACTIVATED, error_code=code, error_message=note, **extra)
        self._canonical(
            ACTIVATED, whmcs_order_id=whmcs_order_id, error_code=code, salesforce_updated=False
        )

    def _keep(self, waiting: outbox.Waiting) -> bool:
        """Leave an outcome Salesforce did not take to the reaper (prov:outbox)."""
        try:
            outbox.put(self.s.redis, self.order_id, waiting)
        except redis.RedisError as exc:
            log.error("Could not keep the outcome for delivery", extra={"error": repr(exc)})
            return False
        log.warning(
            "Outcome kept for delivery to Salesforce",
            extra={"salesforce_status": waiting.status, "update_error_code": waiting.last_error},
        )
        return True

    def _outcome_delivered(self) -> None:
        """Salesforce took this job's outcome: an older one still waiting is obsolete."""
        try:
            outbox.remove(self.s.redis, self.order_id)
        except redis.RedisError as exc:
            log.warning("Could not clear the outbox entry", extra={"error": repr(exc)})

    def _may_mark_failed(self, exc: Exception) -> bool:
        """Touch the Salesforce order only when it is ours to touch."""
        if not self.order_id or isinstance(exc, InvalidEvent | OrderNotFound | WorkerLost):
            return False
        if self.lease is None or self.lease.lost.is_set():
            return False
        if self.order is not None:
            return steps.guard(self.order) is None
        # The order could not be read: unless our own records say it is already done (a
        # duplicate event meeting a Salesforce blip), it is Activating and must not stay so.
        try:
            earlier = self.s.records.earlier(self.order_id)
        except SQLAlchemyError:
            earlier = []
        return not any(a.status == ACTIVATED for a in earlier)

    def _mark_failed(self, code: str, message: str) -> Exception | None:
        """PATCH the order Failed; None when Salesforce took it, else why it did not."""
        try:
            steps.sf_failure_update(self.s.salesforce, self.order_id, code, message)
            return None
        except (ProvisioningError, redis.RedisError) as exc:  # Redis: the shared token cache
            log.error(
                "Could not mark the order Failed in Salesforce",
                extra={"error_code": code, "update_error_code": error_code(exc)},
            )
            return exc

    def _finish_record(self, **values: Any) -> None:
        try:
            self._checkpoint(finished_at=self.s.clock(), **values)
        except Exception as exc:  # the database is down: the log and RQ still tell the story
            log.error("Could not record the outcome in the database", extra={"error": repr(exc)})

    def _canonical(self, outcome: str, **fields: Any) -> None:
        attempt = self.attempt.attempt if self.attempt else None
        log.log(
            logging.ERROR if outcome == FAILED else logging.INFO,
            "Fulfillment finished",
            extra={
                "outcome": outcome,
                "attempt": attempt,
                "duration_ms": _ms(self.started),
                "steps_ms": self.timings,
                "failed_step": self.current_step if outcome == FAILED else None,
                **fields,
            },
        )

    # --- plumbing ---

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[StepNote]:
        note = StepNote()
        self.current_step = name
        started = time.perf_counter()
        with bind(step=name):
            try:
                yield note
            except BaseException as exc:
                detail = short_message(_message(exc), self.s.settings.secrets())[:200]
                self._record_step(name, "failed", started, detail, error_code(exc))
                raise
            self._record_step(name, note.outcome, started, note.detail, "", **note.fields)

    def _record_step(
        self, name: str, outcome: str, started: float, detail: str, code: str, **fields: Any
    ) -> None:
        duration = _ms(started)
        self.timings[name] = round(self.timings.get(name, 0.0) + duration, 1)
        extra = {"outcome": outcome, "duration_ms": duration, **fields}
        if detail:
            extra["detail"] = detail
        if code:
            extra["error_code"] = code
        log.log(logging.ERROR if outcome == "failed" else logging.INFO, name, extra=extra)
        text = f"{code}: {detail}" if code else detail
        self.pending.append(StepRecord(name, outcome, duration, text, self.s.clock()))

    def _checkpoint(self, **values: Any) -> None:
        """Flush the buffered step log and write the attempt, in one transaction. The row is
        first written here, not when the job starts: one commit less on every order."""
        self._settle_writes()
        if self.attempt is None:
            self.attempt = self.s.records.begin(
                order_id=self.order_id or _printable(self.event.order_id),
                job_id=self.event.job_id,
                event_uuid=self.event.event_uuid,
                replay_id=self.event.replay_id,
                worker=self.s.worker_name,
                now=self._started_at,
                supersede=self._holds_lease(),
                steps=self.pending,
                step=self.current_step,
                **values,
            )
        else:
            self.s.records.save(self.attempt.id, self.pending, step=self.current_step, **values)
        self.pending = []

    def _checkpoint_soon(self, **values: Any) -> None:
        """The WHMCS ids, written while AcceptOrder is on the wire instead of before it. Safe:
        what prevents a second order is the create_started_at checkpoint written (and committed)
        before AddOrder; these ids only spare a later attempt its GetOrders lookup."""
        self._settle_writes()
        if self.attempt is None or self._held is None:
            self._checkpoint(**values)
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="records")
            self._held.callback(self._writer.shutdown, wait=True)
        pending, self.pending = self.pending, []
        self._write = self._writer.submit(
            self.s.records.save, self.attempt.id, pending, step=self.current_step, **values
        )

    def _settle_writes(self) -> None:
        """Wait for the background write (re-raising its error): writes stay in order."""
        write, self._write = self._write, None
        if write is not None:
            write.result()

    def _holds_lease(self) -> bool:
        return self.lease is not None and not self.lease.lost.is_set()

    def _require_lease(self, before: str) -> None:
        if self.lease is None or not self.lease.held():
            raise WorkerLost(f"order lease lost before {before}; the reaper owns the order now")


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ProvisioningError):
        return exc.code
    if isinstance(exc, JobTimeoutException):
        return "JOB_TIMEOUT"
    if isinstance(exc, SQLAlchemyError):
        return "EDATABASE"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return RedisUnavailable.code  # from a client that does not wrap its Redis calls
    return "INTERNAL"


def run(services: Services, event: Event) -> Outcome:
    return Run(services, event).execute()


def _message(exc: BaseException) -> str:
    if isinstance(exc, ProvisioningError):
        return exc.message
    if isinstance(exc, JobTimeoutException):
        return "job ran past JOB_TIMEOUT and was stopped"
    if isinstance(exc, SQLAlchemyError):
        return f"fulfilment database unavailable: {type(exc).__name__}"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return f"Redis unavailable: {type(exc).__name__}"
    return f"internal error: {type(exc).__name__}"


def _printable(raw: Any) -> str:
    text = "".join(c for c in str(raw) if c.isalnum())
    return text[:18] or "invalid"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
