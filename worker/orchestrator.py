"""Runs the fulfilment steps for one event, records progress, turns any error into a Failed order.

    validation -> sf_status_update -> order_details -> mapping -> payment_method
               -> whmcs_create -> whmcs_accept -> sf_success_update

Exactly once: the order's lease keeps a second worker out; `fulfilments` remembers what WHMCS
was asked and answered, so a later attempt adopts the order an earlier one made instead of
ordering again. Every failure is re-raised after the order is marked Failed, so RQ files the job
with its traceback in the failed registry.
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
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq.timeouts import JobTimeoutException
from sqlalchemy.exc import SQLAlchemyError

from shared.config import Settings
from shared.errors import (
    IntegrationError,
    InvalidEvent,
    OrderNotFound,
    ProvisioningError,
    RedisUnavailable,
    WorkerLost,
    short_message,
    transient,
)
from shared.logs import bind
from shared.salesforce import SalesforceClient
from shared.whmcs import WhmcsClient
from worker import lease as leases
from worker import steps
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
# An AddOrder sent less than this long ago (write timeout + margin) may still be running in
# WHMCS: an attempt that cannot find its order yet refuses to order again.
UNKNOWN_CREATE_MARGIN = timedelta(seconds=30)


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
        data = payload if isinstance(payload, dict) else {}
        replay = data.get("replay_id")
        return cls(
            order_id=data.get("order_id"),
            job_id=job_id,
            event_uuid=str(data.get("event_uuid") or "")[:64],
            replay_id="" if replay is None else str(replay)[:32],
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
                else:
                    log.info("Guard sees status=Activating")
            if skip:
                note.skipped(skip)
        if skip:
            return self._skip(skip)
        assert self.order is not None
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
            self.whmcs_order = self._create(order, plan, gateway, note)
            steps.check_service_count(self.whmcs_order, plan.expected_services)
        with self.step("whmcs_accept") as note:
            self._require_lease("AcceptOrder")
            if not steps.accept_order(whmcs, self.whmcs_order):
                note.skipped("WHMCS order already Active")
            self.accepted_at = self.s.clock()
        with self.step("sf_success_update"):
            self._require_lease("the success update")
            steps.sf_success_update(sf, order.id, self.whmcs_order.order_id)

    # --- whmcs_create: look before you order, record before you move on ---

    def _create(
        self, order: steps.Order, plan: steps.Plan, gateway: str, note: StepNote
    ) -> steps.WhmcsOrder:
        found = self._earlier_whmcs_order(plan)
        if found is not None:
            note.outcome = "resumed"
            note.detail = f"WHMCS order {found.order_id} from an earlier attempt"
            log.info("Resuming WHMCS order from an earlier attempt", extra=_ids(found))
            self._checkpoint_soon(whmcs_client_id=plan.client_id, **_columns(found))
            return found
        self._require_lease("AddOrder")
        sent_at = self.s.clock()
        self._checkpoint(whmcs_client_id=plan.client_id, create_started_at=sent_at)
        try:
            created = steps.create_order(self.s.whmcs, plan, gateway, steps.notes_for(order))
        except ProvisioningError as exc:
            if not steps.outcome_unknown(exc):
                # A definite refusal (result=error, 403, 4xx): nothing was created.
                with contextlib.suppress(SQLAlchemyError):
                    self._checkpoint(create_started_at=None)
                raise
            created = self._reconcile_after(exc, plan, sent_at)
        self._checkpoint_soon(**_columns(created))
        log.info("WHMCS order created", extra=_ids(created))
        note.fields = _ids(created)
        return created

    def _earlier_whmcs_order(self, plan: steps.Plan) -> steps.WhmcsOrder | None:
        if not steps.may_have_ordered(self.earlier):
            return None
        known = [a.whmcs_order_id for a in self.earlier if a.whmcs_order_id]
        since = min(a.create_started_at for a in self.earlier if a.create_started_at is not None)
        found = steps.find_existing_order(self.s.whmcs, plan.client_id, self.order_id, known, since)
        if found is None:
            window = timedelta(seconds=self.s.settings.whmcs.write_timeout) + UNKNOWN_CREATE_MARGIN
            sent = steps.unknown_create_is_recent(self.earlier, self.s.clock(), window)
            if sent is not None:
                raise IntegrationError(
                    f"an earlier AddOrder sent at {sent:%H:%M:%S} UTC has no known outcome and "
                    "WHMCS shows no order yet; Provision / Retry after "
                    f"{sent + window:%H:%M:%S} UTC",
                    system="whmcs",
                    code="ETIMEOUT",
                )
        return found

    def _reconcile_after(
        self, exc: ProvisioningError, plan: steps.Plan, sent_at: datetime
    ) -> steps.WhmcsOrder:
        """AddOrder's outcome is unknown: it may have created the order. Look once."""
        log.warning("AddOrder outcome unknown; looking for the order in WHMCS")
        try:
            found = steps.find_existing_order(
                self.s.whmcs, plan.client_id, self.order_id, [], sent_at
            )
        except ProvisioningError as lookup:
            log.warning("Lookup after AddOrder failed", extra={"error_code": lookup.code})
            found = None
        if found is None:
            raise IntegrationError(
                f"{exc.message}; AddOrder outcome unknown: the next attempt looks for the order "
                "in WHMCS before ordering again",
                system="whmcs",
                code=exc.code,
                status=getattr(exc, "status", None),
            ) from exc
        return found

    # --- endings ---

    def _succeed(self) -> Outcome:
        assert self.whmcs_order is not None
        self._checkpoint(status=ACTIVATED, accepted_at=self.accepted_at, finished_at=self.s.clock())
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
        status = FAILED
        if self._may_mark_failed(exc):
            undelivered = self._mark_failed(code, message)
            if undelivered is not None and _retry_later(undelivered):
                # Salesforce did not take the Failed status (down, timing out). The attempt stays
                # `running` with its code and the reaper delivers it once Salesforce answers
                # (worker/reaper.py), so the order is not left Activating.
                status = RUNNING
            elif undelivered is not None:
                message = short_message(
                    f"{message} [Salesforce not updated: {error_code(undelivered)}]"
                )
        elif self.order_id and self.lease is None:
            # Taking the lease itself failed (Redis): whether the order was ours to touch is
            # unknown, so it may stay Activating. The attempt stays `running`, with its code:
            # the reaper settles it once it can take the lease (worker/reaper.py).
            status = RUNNING
        extra = {"accepted_at": self.accepted_at} if self.accepted_at else {}
        self._finish_record(status=status, error_code=code, error_message=message, **extra)
        self._canonical(FAILED, error_code=code, error_message=message)

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
                self._record_step(name, "failed", started, _message(exc)[:200], error_code(exc))
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


def _ids(order: steps.WhmcsOrder) -> dict[str, Any]:
    return {
        "whmcs_order_id": order.order_id,
        "whmcs_service_ids": list(order.service_ids),
        "whmcs_invoice_id": order.invoice_id,
    }


def _columns(order: steps.WhmcsOrder) -> dict[str, Any]:
    return {
        "whmcs_order_id": order.order_id,
        "whmcs_service_ids": order.service_ids,
        "whmcs_invoice_id": order.invoice_id,
    }


def _printable(raw: Any) -> str:
    text = "".join(c for c in str(raw) if c.isalnum())
    return text[:18] or "invalid"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
