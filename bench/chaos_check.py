"""The chaos run's verdict: pure checks over the final state of Salesforce, WHMCS, Redis and the DB.

The promise under test: every approved order ends Activated with exactly one accepted WHMCS order,
or Failed with a code; no event is lost (each was enqueued); none is fulfilled twice; no WHMCS
order exists without its Salesforce order.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ACTIVATING, ACTIVATED, FAILED = "Activating", "Activated", "Failed"
# Steps before AddOrder: an order that failed in one of them must have no WHMCS order.
PRE_CREATE_STEPS = frozenset(
    {"", "start", "validation", "sf_status_update", "order_details", "mapping", "payment_method"}
)
TAG = re.compile(r"SF-ORDER:([A-Za-z0-9]{18})")
SHOWN = 5  # offenders named in a check's detail


@dataclass(frozen=True)
class Event:
    uuid: str
    replay_id: int
    order_id: Any  # OrderId__c as published


@dataclass(frozen=True)
class WhmcsOrder:
    id: int
    status: str
    sf_order_id: str | None  # from the SF-ORDER:<id> tag in its notes

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> WhmcsOrder:
        found = TAG.search(str(record.get("notes") or ""))
        return cls(int(record["id"]), str(record.get("status") or ""), found and found[1])


@dataclass(frozen=True)
class Attempt:
    """One row of the fulfilments table (one job's pass over one order)."""

    id: int
    order_id: str
    job_id: str
    event_uuid: str
    status: str  # running | activated | failed | skipped
    step: str
    error_code: str


@dataclass(frozen=True)
class World:
    approved: frozenset[str]
    orders: Mapping[str, Mapping[str, Any]]  # Salesforce Order records by Id
    whmcs: tuple[WhmcsOrder, ...]
    events: tuple[Event, ...]
    enqueued: frozenset[str]  # event uuids with a job or a dedupe record in Redis
    attempts: tuple[Attempt, ...]

    def status(self, order_id: str) -> str:
        return str(self.orders.get(order_id, {}).get("Activation_Status__c") or "")

    def code(self, order_id: str) -> str:
        return str(self.orders.get(order_id, {}).get("Activation_Error_Code__c") or "")

    def whmcs_of(self, order_id: str) -> list[WhmcsOrder]:
        return [w for w in self.whmcs if w.sf_order_id == order_id]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    offenders: tuple[str, ...] = field(default=())


def _check(name: str, offenders: Iterable[str], passed: str, failed: str) -> Check:
    found = tuple(sorted(offenders))
    if not found:
        return Check(name, True, passed)
    shown = ", ".join(found[:SHOWN]) + (" ..." if len(found) > SHOWN else "")
    return Check(name, False, f"{len(found)} {failed}: {shown}", found)


def settled(world: World) -> Check:
    bad = [
        f"{o}={world.status(o) or 'empty'}"
        for o in world.approved
        if world.status(o) != ACTIVATED and not (world.status(o) == FAILED and world.code(o))
    ]
    counts = Counter(world.status(o) for o in world.approved)
    return _check(
        "every approved order is Activated or Failed with a code; none Activating",
        bad,
        f"{len(world.approved)} orders: {counts[ACTIVATED]} Activated, {counts[FAILED]} Failed",
        "orders neither Activated nor Failed with a code",
    )


def all_activated(world: World) -> Check:
    bad = [f"{o}={outcome(world, o)}" for o in world.approved if world.status(o) != ACTIVATED]
    return _check(
        "every approved order is Activated",
        bad,
        f"{len(world.approved)} of {len(world.approved)} Activated",
        "orders not Activated",
    )


def one_accepted_whmcs_order(world: World) -> Check:
    bad = []
    for order_id in world.approved:
        if world.status(order_id) != ACTIVATED:
            continue
        made = world.whmcs_of(order_id)
        recorded = str(world.orders[order_id].get("WHMCS_Order_ID__c") or "")
        if len(made) != 1:
            bad.append(f"{order_id} has {len(made)} WHMCS orders")
        elif str(made[0].id) != recorded:
            bad.append(f"{order_id} records WHMCS {recorded or 'none'}, made {made[0].id}")
        elif made[0].status != "Active":
            bad.append(f"{order_id}: WHMCS order {made[0].id} is {made[0].status}")
    activated = sum(1 for o in world.approved if world.status(o) == ACTIVATED)
    return _check(
        "every Activated order has exactly one WHMCS order, accepted, the one it records",
        bad,
        f"{activated} Activated orders, {activated} accepted WHMCS orders",
        "Activated orders without exactly one accepted WHMCS order",
    )


def failed_orders_have_at_most_their_own(world: World) -> Check:
    """Failed before whmcs_create: no WHMCS order. Failed later: at most one."""
    bad = []
    for order_id in world.approved:
        if world.status(order_id) != FAILED:
            continue
        made = len(world.whmcs_of(order_id))
        step = last_failed_step(world.attempts, order_id)
        if step in PRE_CREATE_STEPS and made:
            bad.append(f"{order_id} failed in {step or 'start'} yet has {made} WHMCS orders")
        elif made > 1:
            bad.append(f"{order_id} failed in {step} and has {made} WHMCS orders")
    failed = [o for o in world.approved if world.status(o) == FAILED]
    early = sum(1 for o in failed if last_failed_step(world.attempts, o) in PRE_CREATE_STEPS)
    return _check(
        "a Failed order that failed before whmcs_create has no WHMCS order (others at most one)",
        bad,
        f"{len(failed)} Failed orders, {early} of them before whmcs_create",
        "Failed orders with a WHMCS order they should not have",
    )


def last_failed_step(attempts: Iterable[Attempt], order_id: str) -> str:
    failed = [a for a in attempts if a.order_id == order_id and a.status == "failed"]
    return max(failed, key=lambda a: a.id).step if failed else ""


def no_orphan_whmcs_orders(world: World) -> Check:
    bad = [
        f"WHMCS {w.id} ({w.sf_order_id or 'no tag'})"
        for w in world.whmcs
        if w.sf_order_id not in world.approved
    ]
    return _check(
        "no WHMCS order exists without a Salesforce order",
        bad,
        f"{len(world.whmcs)} WHMCS orders, each tagged with an approved Salesforce order",
        "WHMCS orders without a Salesforce order",
    )


def events_enqueued(world: World) -> Check:
    bad = [f"{e.uuid} (replay {e.replay_id})" for e in world.events if e.uuid not in world.enqueued]
    return _check(
        "every published event was enqueued at least once",
        bad,
        f"{len(world.events)} events published, {len(world.events)} enqueued",
        "events never enqueued",
    )


def fulfilled_at_most_once(world: World) -> Check:
    """No event's job, and no order, reached Activated more than once."""
    by_job = Counter(a.job_id for a in world.attempts if a.status == "activated")
    by_order = Counter(a.order_id for a in world.attempts if a.status == "activated")
    bad = [f"job {j} x{n}" for j, n in by_job.items() if n > 1]
    bad += [f"order {o} x{n}" for o, n in by_order.items() if n > 1]
    runs = Counter(a.job_id for a in world.attempts)
    most = max(runs.values(), default=0)
    return _check(
        "every published event was fulfilled at most once",
        bad,
        f"{sum(by_job.values())} fulfilments, none twice; at most {most} attempt row(s) per job",
        "events or orders fulfilled more than once",
    )


def after_faults(world: World) -> list[Check]:
    """The checks of the issue, after the load and the abandoned-job window."""
    return [
        settled(world),
        one_accepted_whmcs_order(world),
        failed_orders_have_at_most_their_own(world),
        no_orphan_whmcs_orders(world),
        events_enqueued(world),
        fulfilled_at_most_once(world),
    ]


def after_retry(world: World) -> list[Check]:
    """With the faults cleared and every Failed order retried: all Activated, one order each."""
    return [
        all_activated(world),
        one_accepted_whmcs_order(world),
        no_orphan_whmcs_orders(world),
        events_enqueued(world),
        fulfilled_at_most_once(world),
    ]


def outcome(world: World, order_id: str) -> str:
    """`Activated`, `Failed <code>`, or the status as it stands."""
    status = world.status(order_id)
    return f"{status} {world.code(order_id)}".strip() if status == FAILED else status or "empty"
