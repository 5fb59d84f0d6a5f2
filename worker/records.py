"""Database access for fulfilments, their step log, and Account -> WHMCS client mappings.

A fulfilment row is one job's attempt on an order. Its WHMCS fields are the checkpoint that makes
the next attempt resume instead of ordering twice: `create_started_at` is written before AddOrder
is sent, `whmcs_order_id` the moment it answers. A row still `running` after its job ended (one
that could not take the order's lease, and so could not tell the order) is the reaper's to settle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from shared.db import account_mappings, fulfilment_steps, fulfilments

RUNNING, ACTIVATED, FAILED, SKIPPED = "running", "activated", "failed", "skipped"


@dataclass(frozen=True)
class Attempt:
    id: int
    sf_order_id: str
    job_id: str
    attempt: int
    status: str
    step: str
    worker: str = ""
    event_uuid: str = ""
    replay_id: str = ""
    whmcs_client_id: int | None = None
    whmcs_order_id: int | None = None
    whmcs_service_ids: tuple[int, ...] = ()
    whmcs_invoice_id: int | None = None
    create_started_at: datetime | None = None
    accepted_at: datetime | None = None
    error_code: str = ""
    error_message: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def create_outcome_unknown(self) -> bool:
        """AddOrder may have been sent, and no answer was recorded."""
        return self.create_started_at is not None and self.whmcs_order_id is None


@dataclass(frozen=True)
class StepRecord:
    step: str
    outcome: str  # ok | failed | skipped
    duration_ms: float
    detail: str = ""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Records:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- fulfilments ---

    def begin(
        self,
        *,
        order_id: str,
        job_id: str,
        event_uuid: str = "",
        replay_id: str = "",
        worker: str = "",
        now: datetime,
        supersede: bool = True,
        steps: Sequence[StepRecord] = (),
        **values: Any,
    ) -> Attempt:
        """A new attempt row (with its first step log rows and `values`), in one transaction.
        With `supersede`, the caller holds the order's lease, so any other row still `running`
        belongs to a job that died before the reaper noticed: close it."""
        row = {
            "sf_order_id": order_id,
            "job_id": job_id[:80],
            "event_uuid": event_uuid[:64],
            "replay_id": replay_id[:32],
            "status": RUNNING,
            "step": "",
            "worker": worker[:120],
            "started_at": now,
            **_column_values(values),
        }
        with self.engine.begin() as conn:
            if supersede:
                conn.execute(
                    fulfilments.update()
                    .where(fulfilments.c.sf_order_id == order_id, fulfilments.c.status == RUNNING)
                    .values(
                        status=FAILED,
                        error_code="WORKER_LOST",
                        error_message="superseded: its worker stopped before finishing",
                        finished_at=now,
                    )
                )
            row["attempt"] = (
                1
                + conn.execute(
                    select(func.count()).where(fulfilments.c.sf_order_id == order_id)
                ).scalar_one()
            )
            inserted = conn.execute(fulfilments.insert().values(**row)).inserted_primary_key
            assert inserted is not None
            row["id"] = inserted[0]
            if steps:
                conn.execute(fulfilment_steps.insert(), [_step_row(row["id"], s) for s in steps])
        return _attempt({**_DEFAULTS, **row})

    def get(self, attempt_id: int) -> Attempt:
        with self.engine.connect() as conn:
            row = conn.execute(select(fulfilments).where(fulfilments.c.id == attempt_id)).one()
        return _attempt(row._mapping)

    def earlier(self, order_id: str, before_id: int | None = None) -> list[Attempt]:
        """Attempts on the order (before `before_id`, if given), newest first."""
        with self.engine.connect() as conn:
            return _earlier(conn, order_id, before_id)

    def prior(self, order_id: str, account_id: str) -> tuple[list[Attempt], int | None]:
        """What mapping and whmcs_create need, in one read: the order's earlier attempts and
        the account's WHMCS client mapping."""
        with self.engine.connect() as conn:
            return _earlier(conn, order_id, None), _client(conn, account_id)

    def by_job(self, order_id: str, job_id: str) -> Attempt | None:
        query = (
            select(fulfilments)
            .where(fulfilments.c.sf_order_id == order_id, fulfilments.c.job_id == job_id)
            .order_by(fulfilments.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _attempt(row._mapping) if row is not None else None

    def save(self, attempt_id: int, steps: Sequence[StepRecord] = (), **values: Any) -> None:
        """One transaction: append step log rows and update the attempt's fields."""
        values = _column_values(values)
        with self.engine.begin() as conn:
            if steps:
                conn.execute(fulfilment_steps.insert(), [_step_row(attempt_id, s) for s in steps])
            if values:
                conn.execute(
                    fulfilments.update().where(fulfilments.c.id == attempt_id).values(**values)
                )

    def history(self, order_id: str) -> list[tuple[Attempt, list[StepRecord]]]:
        """Every attempt on the order, oldest first, with its step log."""
        with self.engine.connect() as conn:
            attempts = [
                _attempt(row._mapping)
                for row in conn.execute(
                    select(fulfilments)
                    .where(fulfilments.c.sf_order_id == order_id)
                    .order_by(fulfilments.c.id)
                )
            ]
            steps: dict[int, list[StepRecord]] = {a.id: [] for a in attempts}
            if attempts:
                rows = conn.execute(
                    select(fulfilment_steps)
                    .where(fulfilment_steps.c.fulfilment_id.in_(list(steps)))
                    .order_by(fulfilment_steps.c.id)
                )
                for row in rows:
                    steps[row.fulfilment_id].append(_step(row._mapping))
        return [(a, steps[a.id]) for a in attempts]

    # --- account mappings ---

    def client_for_account(self, account_id: str) -> int | None:
        with self.engine.connect() as conn:
            return _client(conn, account_id)

    def set_mappings(self, rows: Iterable[tuple[str, int, str]], now: datetime) -> int:
        """Insert or replace (account id, client id, note) rows, all or nothing."""
        count = 0
        with self.engine.begin() as conn:
            for account_id, client_id, note in rows:
                conn.execute(
                    account_mappings.delete().where(account_mappings.c.sf_account_id == account_id)
                )
                conn.execute(
                    account_mappings.insert().values(
                        sf_account_id=account_id,
                        whmcs_client_id=client_id,
                        note=note[:255],
                        updated_at=now,
                    )
                )
                count += 1
        return count

    def mappings(self) -> list[dict[str, Any]]:
        query = select(account_mappings).order_by(account_mappings.c.sf_account_id)
        with self.engine.connect() as conn:
            return [
                {**row._mapping, "updated_at": aware(row.updated_at)} for row in conn.execute(query)
            ]


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


_DEFAULTS = {
    "whmcs_client_id": None,
    "whmcs_order_id": None,
    "whmcs_service_ids": "",
    "whmcs_invoice_id": None,
    "create_started_at": None,
    "accepted_at": None,
    "error_code": "",
    "error_message": "",
    "finished_at": None,
}


def _column_values(values: dict[str, Any]) -> dict[str, Any]:
    values = dict(values)
    if "whmcs_service_ids" in values:
        values["whmcs_service_ids"] = ",".join(str(i) for i in values["whmcs_service_ids"])
    for name, limit in (("error_message", 255), ("error_code", 40), ("step", 32)):
        if name in values:
            values[name] = str(values[name])[:limit]
    return values


def _earlier(conn: Connection, order_id: str, before_id: int | None) -> list[Attempt]:
    query = select(fulfilments).where(fulfilments.c.sf_order_id == order_id)
    if before_id is not None:
        query = query.where(fulfilments.c.id < before_id)
    return [_attempt(row._mapping) for row in conn.execute(query.order_by(fulfilments.c.id.desc()))]


def _client(conn: Connection, account_id: str) -> int | None:
    query = select(account_mappings.c.whmcs_client_id).where(
        account_mappings.c.sf_account_id == account_id
    )
    return conn.execute(query).scalar()


def _attempt(row: Any) -> Attempt:
    services = tuple(int(s) for s in (row["whmcs_service_ids"] or "").split(",") if s.strip())
    return Attempt(
        id=row["id"],
        sf_order_id=row["sf_order_id"],
        job_id=row["job_id"],
        attempt=row["attempt"],
        status=row["status"],
        step=row["step"],
        worker=row["worker"],
        event_uuid=row["event_uuid"],
        replay_id=row["replay_id"],
        whmcs_client_id=row["whmcs_client_id"],
        whmcs_order_id=row["whmcs_order_id"],
        whmcs_service_ids=services,
        whmcs_invoice_id=row["whmcs_invoice_id"],
        create_started_at=aware(row["create_started_at"]),
        accepted_at=aware(row["accepted_at"]),
        error_code=row["error_code"],
        error_message=row["error_message"],
        started_at=aware(row["started_at"]),
        finished_at=aware(row["finished_at"]),
    )


def _step_row(attempt_id: int, step: StepRecord) -> dict[str, Any]:
    return {
        "fulfilment_id": attempt_id,
        "step": step.step[:32],
        "outcome": step.outcome[:16],
        "duration_ms": round(step.duration_ms, 3),
        "detail": step.detail[:500],
        "at": step.at,
    }


def _step(row: Any) -> StepRecord:
    return StepRecord(
        step=row["step"],
        outcome=row["outcome"],
        duration_ms=row["duration_ms"],
        detail=row["detail"],
        at=aware(row["at"]) or datetime.now(UTC),
    )
