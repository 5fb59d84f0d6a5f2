"""The chaos run's verdict: pure checks over the final state of Salesforce, WHMCS, Redis and the DB.

The promise under test: every approved order ends Activated with exactly one accepted WHMCS order
holding one service per unit ordered, or Failed with a code; no event is lost (each was enqueued,
or lost with Redis's last second and its order reconciled); an approval with no event is found by
the reconciler; none is fulfilled twice; a Retry on an Activated order keeps its one WHMCS order;
no WHMCS order exists without its Salesforce order; one Provision / Retry round activates all.
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
REC = "rec-"  # the job id prefix of the reconciler's jobs
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
    services: tuple[tuple[int, int], ...] = ()  # (pid, qty) of each service

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> WhmcsOrder:
        found = TAG.search(str(record.get("notes") or ""))
        services = tuple(
            (int(s["pid"]), int(s.get("qty") or 1)) for s in record.get("services") or ()
        )
        return cls(int(record["id"]), str(record.get("status") or ""), found and found[1], services)

    def holds(self) -> dict[int, tuple[int, int]]:
        """pid -> (services, units): what `stage.expected_services` says it must be."""
        held: dict[int, tuple[int, int]] = {}
        for pid, qty in self.services:
            count, units = held.get(pid, (0, 0))
            held[pid] = (count + 1, units + qty)
        return held


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

    def finished(self, order_id: str) -> bool:
        """Activated, or Failed with a code."""
        status = self.status(order_id)
        return status == ACTIVATED or (status == FAILED and bool(self.code(order_id)))

    def with_status(self, status: str) -> list[str]:
        return [o for o in self.approved if self.status(o) == status]

    def whmcs_of(self, order_id: str) -> list[WhmcsOrder]:
        return [w for w in self.whmcs if w.sf_order_id == order_id]

    def reconciled(self, order_id: str) -> bool:
        """The reconciler gave the order a job (`rec-<OrderId>-<digits>`) that ran."""
        return any(a.order_id == order_id and a.job_id.startswith(REC) for a in self.attempts)


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
    bad = [f"{o}={world.status(o) or 'empty'}" for o in world.approved if not world.finished(o)]
    counts = Counter(world.status(o) for o in world.approved)
    return _check(
        "every approved order is Activated or Failed with a code; none Activating",
        bad,
        f"{len(world.approved)} orders: {counts[ACTIVATED]} Activated, {counts[FAILED]} Failed",
        "orders neither Activated nor Failed with a code",
    )


def all_activated(world: World, rounds: int) -> Check:
    """After `rounds` rounds of Provision / Retry (the promise: one is enough)."""
    bad = [f"{o}={outcome(world, o)}" for o in world.approved if world.status(o) != ACTIVATED]
    return _check(
        "every approved order is Activated after at most one Provision / Retry",
        bad,
        f"{len(world.approved)} of {len(world.approved)} Activated after {rounds} retry round(s)",
        f"orders not Activated after {rounds} retry round(s)",
    )


def services_match_quantities(
    world: World, expected: Mapping[str, Mapping[int, tuple[int, int]]]
) -> Check:
    """Every Activated order's WHMCS order holds, per product, one service per unit ordered (one
    service holding them all for a scaling product): `expected` is order -> pid -> (services,
    units)."""
    bad = []
    activated = world.with_status(ACTIVATED)
    for order_id in activated:
        recorded = str(world.orders[order_id].get("WHMCS_Order_ID__c") or "")
        made = [w for w in world.whmcs_of(order_id) if str(w.id) == recorded]
        held = made[0].holds() if made else {}
        if held != dict(expected.get(order_id, {})):
            bad.append(f"{order_id} holds {_units(held)}, ordered {_units(expected[order_id])}")
    services = sum(sum(n for n, _ in expected[o].values()) for o in activated if o in expected)
    units = sum(sum(u for _, u in expected[o].values()) for o in activated if o in expected)
    return _check(
        "every Activated order's WHMCS services match its quantities (one per unit, per allowqty)",
        bad,
        f"{len(activated)} Activated orders: {units} units in {services} WHMCS services",
        "Activated orders whose WHMCS services do not match the quantities ordered",
    )


def _units(held: Mapping[int, tuple[int, int]]) -> str:
    return " ".join(f"pid{pid}:{n}x/{u}u" for pid, (n, u) in sorted(held.items())) or "nothing"


def unpublished_reconciled(world: World, unpublished: Iterable[str]) -> Check:
    """An approval whose event never came ends Activated or Failed with a code, by a job of
    the reconciler."""
    orders = sorted(unpublished)
    bad = [
        f"{o}={outcome(world, o)}{'' if world.reconciled(o) else ', no reconciler job'}"
        for o in orders
        if not (world.reconciled(o) and world.finished(o))
    ]
    counts = Counter(outcome(world, o) for o in orders)
    return _check(
        "every approval whose event was never published was finished by the reconciler",
        bad,
        f"{len(orders)} approvals without an event: "
        + (", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "none"),
        "approvals without an event not finished by the reconciler",
    )


def retried_activated_kept(world: World, kept: Mapping[str, str], final: bool = True) -> Check:
    """A Retry on an Activated order leaves it Activated on the WHMCS order it recorded, and
    makes no other (`kept`: order -> the WHMCS order id it recorded before the Retry). Before
    the retry round (`final` False) a fault on the Retry's own job may have left it Failed with
    a code, still naming its one WHMCS order."""
    allowed = {ACTIVATED} if final else {ACTIVATED, FAILED}
    bad = []
    for order_id, whmcs_id in sorted(kept.items()):
        now = str(world.orders.get(order_id, {}).get("WHMCS_Order_ID__c") or "")
        made = sorted(w.id for w in world.whmcs_of(order_id))
        if world.status(order_id) not in allowed or now != whmcs_id or made != [int(whmcs_id)]:
            bad.append(
                f"{order_id}={outcome(world, order_id)} records {now or 'none'} (was {whmcs_id}), "
                f"WHMCS orders {made}"
            )
    counts = Counter(outcome(world, o) for o in kept)
    return _check(
        "a Retry on an Activated order keeps it "
        + ("Activated" if final else "Activated (or Failed with a code)")
        + " on its one WHMCS order",
        bad,
        f"{len(kept)} Activated orders Retried: "
        + (", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "none")
        + "; each on the WHMCS order it recorded, no new one",
        "Retried Activated orders changed",
    )


def one_accepted_whmcs_order(world: World) -> Check:
    bad = []
    activated = world.with_status(ACTIVATED)
    for order_id in activated:
        made = world.whmcs_of(order_id)
        recorded = str(world.orders[order_id].get("WHMCS_Order_ID__c") or "")
        if len(made) != 1:
            bad.append(f"{order_id} has {len(made)} WHMCS orders")
        elif str(made[0].id) != recorded:
            bad.append(f"{order_id} records WHMCS {recorded or 'none'}, made {made[0].id}")
        elif made[0].status != "Active":
            bad.append(f"{order_id}: WHMCS order {made[0].id} is {made[0].status}")
    return _check(
        "every Activated order has exactly one WHMCS order, accepted, the one it records",
        bad,
        f"{len(activated)} Activated orders, {len(activated)} accepted WHMCS orders",
        "Activated orders without exactly one accepted WHMCS order",
    )


def failed_orders_have_at_most_their_own(world: World, retried: Iterable[str] = ()) -> Check:
    """Failed before whmcs_create: no WHMCS order. Failed later: at most one. A Retried
    Activated order had its WHMCS order before the Retry: a failure of the Retry's job in any
    step leaves it that one (retried_activated_kept checks it is the one it records)."""
    bad = []
    kept = set(retried)
    failed = world.with_status(FAILED)
    for order_id in failed:
        made = len(world.whmcs_of(order_id))
        step = last_failed_step(world.attempts, order_id)
        if step in PRE_CREATE_STEPS and made and order_id not in kept:
            bad.append(f"{order_id} failed in {step or 'start'} yet has {made} WHMCS orders")
        elif made > 1:
            bad.append(f"{order_id} failed in {step} and has {made} WHMCS orders")
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


def events_enqueued(world: World, redis_crashed: bool = False) -> Check:
    """Every event was taken in. After a kill -9 of Redis, an intake in its last second may be
    lost for good (the subscriber had moved past it): then the order must have been found by
    the reconciler instead. Without a crash, no exception."""
    missing = [e for e in world.events if e.uuid not in world.enqueued]
    covered = [e for e in missing if redis_crashed and world.reconciled(str(e.order_id))]
    bad = [f"{e.uuid} (replay {e.replay_id})" for e in missing if e not in covered]
    enqueued = len(world.events) - len(missing)
    lost = (
        f"; {len(covered)} lost with Redis's last second, their orders reconciled"
        if covered
        else ""
    )
    return _check(
        "every published event was enqueued at least once (or, lost with Redis, reconciled)",
        bad,
        f"{len(world.events)} events published, {enqueued} enqueued{lost}",
        "events never enqueued",
    )


def fulfilled_at_most_once(world: World, retried: Iterable[str] = ()) -> Check:
    """No event's job, and no order, reached Activated more than once; an Activated order that
    was Retried may be finished once more (on its recorded WHMCS order: see
    retried_activated_kept)."""
    again = set(retried)
    by_job = Counter(a.job_id for a in world.attempts if a.status == "activated")
    by_order = Counter(a.order_id for a in world.attempts if a.status == "activated")
    bad = [f"job {j} x{n}" for j, n in by_job.items() if n > 1]
    bad += [f"order {o} x{n}" for o, n in by_order.items() if n > 1 + (o in again)]
    runs = Counter(a.job_id for a in world.attempts)
    most = max(runs.values(), default=0)
    return _check(
        "every published event was fulfilled at most once",
        bad,
        f"{sum(by_job.values())} fulfilments, none twice; at most {most} attempt row(s) per job",
        "events or orders fulfilled more than once",
    )


@dataclass(frozen=True)
class Facts:
    """What the run did, that the checks need besides the world's state."""

    expected: Mapping[str, Mapping[int, tuple[int, int]]]  # order -> pid -> (services, units)
    unpublished: frozenset[str] = frozenset()  # approvals whose event was never published
    kept: Mapping[str, str] = field(default_factory=dict)  # Retried Activated -> its WHMCS id
    redis_crashed: bool = False  # a kill -9 of Redis: its last second of writes lost
    retry_rounds: int = 0


def after_faults(world: World, facts: Facts) -> list[Check]:
    """The checks of the issue, after the load and the abandoned-job window."""
    return [
        settled(world),
        one_accepted_whmcs_order(world),
        services_match_quantities(world, facts.expected),
        failed_orders_have_at_most_their_own(world, facts.kept),
        no_orphan_whmcs_orders(world),
        events_enqueued(world, facts.redis_crashed),
        unpublished_reconciled(world, facts.unpublished),
        retried_activated_kept(world, facts.kept, final=False),
        fulfilled_at_most_once(world, facts.kept),
    ]


def after_retry(world: World, facts: Facts) -> list[Check]:
    """With the faults cleared and every Failed order retried once: all Activated, one order
    each, holding what was ordered."""
    return [
        all_activated(world, facts.retry_rounds),
        one_accepted_whmcs_order(world),
        services_match_quantities(world, facts.expected),
        no_orphan_whmcs_orders(world),
        events_enqueued(world, facts.redis_crashed),
        retried_activated_kept(world, facts.kept),
        fulfilled_at_most_once(world, facts.kept),
    ]


def outcome(world: World, order_id: str) -> str:
    """`Activated`, `Failed <code>`, or the status as it stands."""
    status = world.status(order_id)
    return f"{status} {world.code(order_id)}".strip() if status == FAILED else status or "empty"
