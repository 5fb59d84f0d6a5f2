"""Reading the final state for the checks: sandbox records, Redis enqueue records, the DB."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, select

from bench.chaos.promise import Attempt, Event, WhmcsOrder, World
from shared import db, keys
from shared.queueing import job_id_for

DUPLICATE_LINE = "Duplicate Platform Event ignored"
# The workers' lines for an outcome PATCH Salesforce refused (the job's, then the reaper's).
REFUSED_LINES = frozenset(
    {"Outcome kept for delivery to Salesforce", "Outcome still not taken by Salesforce; will retry"}
)


def gather(admin: Any, conn: redis.Redis, engine: Engine, approved: Iterable[str]) -> World:
    events = tuple(_event(e) for e in admin.events())
    return World(
        approved=frozenset(approved),
        orders={o["Id"]: o for o in admin.orders()},
        whmcs=tuple(WhmcsOrder.from_record(r) for r in admin.whmcs_orders()["orders"]),
        events=events,
        enqueued=enqueued(conn, events),
        attempts=attempts(engine),
    )


def _event(raw: dict[str, Any]) -> Event:
    header, payload = raw.get("event") or {}, raw.get("payload") or {}
    return Event(
        str(header.get("EventUuid")), int(header.get("replayId")), payload.get("OrderId__c")
    )


def enqueued(conn: redis.Redis, events: Iterable[Event]) -> frozenset[str]:
    """Events the subscriber took in: its dedupe record or the job itself is in Redis."""
    events = list(events)
    with conn.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.exists(keys.seen_key(event.uuid), "rq:job:" + job_id_for(event.uuid, None))
        found = pipe.execute()
    return frozenset(e.uuid for e, n in zip(events, found, strict=True) if n)


def attempts(engine: Engine) -> tuple[Attempt, ...]:
    f = db.fulfilments
    query = select(
        f.c.id, f.c.sf_order_id, f.c.job_id, f.c.event_uuid, f.c.status, f.c.step, f.c.error_code
    ).order_by(f.c.id)
    with engine.connect() as conn:
        return tuple(Attempt(*row) for row in conn.execute(query))


def whmcs_fault_hits(admin: Any) -> dict[tuple[str, str], set[str]]:
    """(action, emulator fault kind) -> the Salesforce orders whose WHMCS call it struck."""
    by_whmcs_id = {
        int(r["id"]): WhmcsOrder.from_record(r).sf_order_id for r in admin.whmcs_orders()["orders"]
    }
    hits: dict[tuple[str, str], set[str]] = {}
    for request in admin.whmcs_requests()["requests"]:
        if not request.get("fault"):
            continue
        order = _order_of(request, by_whmcs_id)
        if order:
            hits.setdefault((request["action"], request["fault"]), set()).add(order)
    return hits


def _order_of(request: dict[str, Any], by_whmcs_id: dict[int, str | None]) -> str | None:
    params = request.get("params") or {}
    if request.get("action") == "AddOrder":
        return WhmcsOrder.from_record({"id": 0, "notes": params.get("notes")}).sf_order_id
    try:
        return by_whmcs_id.get(int(params.get("orderid")))
    except (TypeError, ValueError):
        return None


def duplicate_deliveries(logs: Iterable[Path]) -> set[str]:
    """Orders whose event the subscriber received again and ignored (its own log says so)."""
    return {
        line["order_id"]
        for line in _json_lines(logs)
        if line.get("message") == DUPLICATE_LINE and isinstance(line.get("order_id"), str)
    }


def refused_outcomes(logs: Iterable[Path], code: str) -> set[str]:
    """Orders whose outcome PATCH Salesforce refused with `code` (the workers' logs say so)."""
    return {
        line["order_id"]
        for line in _json_lines(logs)
        if line.get("message") in REFUSED_LINES
        and str(line.get("update_error_code")) == code
        and isinstance(line.get("order_id"), str)
    }


def _json_lines(logs: Iterable[Path]) -> Iterable[dict[str, Any]]:
    for path in logs:
        for raw in path.read_text(errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                yield line


def secrets_in_logs(logs: Iterable[Path], secrets: Mapping[str, str]) -> list[str]:
    """`file: what` for every log file holding a secret verbatim (`secrets`: what -> value)."""
    found = []
    for path in logs:
        text = path.read_text(errors="replace")
        found += [f"{path.name}: {what}" for what, value in secrets.items() if value in text]
    return found
