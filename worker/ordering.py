"""Placing the WHMCS order, once: look before you order, record before you move on.

Everything that decides whether AddOrder may be sent lives here: the `SF-ORDER:<Id>` tag written in
the order's notes, the lookup of an order an earlier attempt made (by its recorded id, else the
client's orders paged back to that attempt's AddOrder), the wait while an AddOrder whose answer was
lost may still be running in WHMCS, and the check of a WHMCS order Salesforce already names
(`WHMCS_Order_ID__c` on an order that reads Activating, after a Retry).

Which failures of AddOrder leave its outcome unknown (see `outcome_unknown`): a read timeout, a
connection lost after the request went out, a garbled reply, and HTTP 500, 502 and 504. HTTP 429
and 503 are definite refusals (WHMCS, or the proxy before it, did not run the action), as are a
connection refused or timed out before the request went out, any other 4xx and `result=error`:
nothing was ordered, and the next attempt orders at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from shared.errors import (
    BadResponse,
    ConnectionFailed,
    HttpStatusError,
    IntegrationError,
    OrderError,
    OutcomeUnknown,
    ProvisioningError,
    UpstreamTimeout,
    WhmcsOrderMismatch,
)
from shared.whmcs import WhmcsClient
from worker import mapping
from worker.mapping import Plan
from worker.records import Attempt

log = logging.getLogger(__name__)

# Looking for an order an earlier attempt may have made: the client's orders a page at a time,
# back to the day before that attempt's AddOrder (WHMCS dates are server-local, in a zone we do
# not know: a day covers every offset), but never more than LOOKUP_MAX_ORDERS of them.
LOOKUP_PAGE = 100
LOOKUP_MAX_ORDERS = 1000
LOOKUP_DATE_MARGIN = timedelta(days=1)
DEAD_ORDER_STATUSES = ("Cancelled", "Fraud")
# An AddOrder sent less than this long ago (write timeout + margin) may still be running in
# WHMCS: an attempt that cannot find its order yet refuses to order again.
UNKNOWN_CREATE_MARGIN = timedelta(seconds=30)
# HTTP statuses after which AddOrder may still have run (503 and 429 say it did not).
UNKNOWN_STATUSES = (500, 502, 504)


@dataclass(frozen=True)
class WhmcsOrder:
    order_id: int
    service_ids: tuple[int, ...]
    invoice_id: int | None
    status: str = "Pending"  # as GetOrders reports it; AddOrder creates Pending orders


# --- the tag ---


def notes_for(order_number: str, order_id: str) -> str:
    return f"Salesforce Order {order_number} {order_tag(order_id)}".replace("  ", " ")


def order_tag(order_id: str) -> str:
    """The idempotency tag in WHMCS notes (18-character ids never prefix one another)."""
    return f"SF-ORDER:{order_id}"


# --- pure decisions ---


def may_have_ordered(earlier: Iterable[Attempt]) -> bool:
    """Whether any earlier attempt got as far as sending AddOrder."""
    return any(a.create_started_at is not None for a in earlier)


def unknown_create_is_recent(
    earlier: Iterable[Attempt], now: datetime, window: timedelta
) -> datetime | None:
    """When an earlier AddOrder with no recorded answer was sent within `window`: WHMCS may still
    be executing it (PHP runs on after the client gives up), so "not found" is not final yet."""
    times = [a.create_started_at for a in earlier if a.create_outcome_unknown]
    recent = [t for t in times if t is not None and now - t < window]
    return max(recent) if recent else None


def outcome_unknown(exc: BaseException) -> bool:
    """A write that failed like this may still have happened in WHMCS."""
    if isinstance(exc, UpstreamTimeout | ConnectionFailed):
        return exc.request_sent  # refused or timed out while connecting: nothing went out
    if isinstance(exc, BadResponse):
        return True
    return isinstance(exc, HttpStatusError) and exc.status in UNKNOWN_STATUSES


def pick_existing(
    orders: Iterable[Mapping[str, Any]], order_id: str, known_ids: Iterable[int]
) -> tuple[WhmcsOrder | None, list[int]]:
    """The WHMCS order already made for this Salesforce order, and any other live duplicates."""
    known = set(known_ids)
    tag = order_tag(order_id)
    live = []
    for raw in orders:
        parsed = parse_whmcs_order(raw)
        if parsed is None or parsed.status in DEAD_ORDER_STATUSES:
            continue
        if parsed.order_id in known or tag in str(raw.get("notes") or ""):
            live.append(parsed)
    if not live:
        return None, []
    live.sort(key=lambda o: (o.order_id not in known, o.order_id))
    return live[0], [o.order_id for o in live[1:]]


def recorded_verdict(
    orders: Iterable[Mapping[str, Any]], order_id: str, whmcs_order_id: int
) -> WhmcsOrder | str:
    """The WHMCS order `WHMCS_Order_ID__c` names, when it is this Salesforce order's and alive;
    otherwise why not (the message of a WhmcsOrderMismatch)."""
    tag = order_tag(order_id)
    for raw in orders:
        parsed = parse_whmcs_order(raw)
        if parsed is None or parsed.order_id != whmcs_order_id:
            continue
        if tag not in str(raw.get("notes") or ""):
            return (
                f"WHMCS order {whmcs_order_id} (WHMCS_Order_ID__c) belongs to something else: "
                f"its notes do not carry {tag}; clear WHMCS_Order_ID__c, then Provision / Retry"
            )
        if parsed.status in DEAD_ORDER_STATUSES:
            return (
                f"WHMCS order {whmcs_order_id} (WHMCS_Order_ID__c) is {parsed.status}; clear "
                "WHMCS_Order_ID__c to order again, then Provision / Retry"
            )
        return parsed
    return (
        f"WHMCS has no order {whmcs_order_id} (WHMCS_Order_ID__c); clear the field to order "
        "again, then Provision / Retry"
    )


def last_page(page: Sequence[Mapping[str, Any]], limit: int, cutoff: datetime | None) -> bool:
    """Whether to stop paging: the list ended, or its oldest order predates `cutoff`."""
    if len(page) < limit:
        return True
    placed = whmcs_order_date(page[-1])
    return cutoff is not None and placed is not None and placed < cutoff


def whmcs_order_date(raw: Mapping[str, Any]) -> datetime | None:
    """A GetOrders `date` (WHMCS server-local time, zone unknown), read as if it were UTC."""
    try:
        return datetime.strptime(str(raw.get("date") or ""), "%Y-%m-%d %H:%M:%S").replace(
            tzinfo=UTC
        )
    except ValueError:
        return None


def parse_whmcs_order(raw: Mapping[str, Any]) -> WhmcsOrder | None:
    order_id = mapping.parse_positive_int(raw.get("id"))
    if order_id is None:
        return None
    lineitems = raw.get("lineitems")
    items = lineitems.get("lineitem", []) if isinstance(lineitems, Mapping) else []
    services = tuple(
        sid
        for item in items
        if isinstance(item, Mapping) and item.get("type", "product") == "product"
        for sid in [mapping.parse_positive_int(item.get("relid"))]
        if sid is not None
    )
    invoice = mapping.parse_positive_int(raw.get("invoiceid"))
    return WhmcsOrder(order_id, services, invoice, str(raw.get("status") or ""))


def check_service_count(order: WhmcsOrder, expected: int) -> None:
    if len(order.service_ids) != expected:
        raise OrderError(
            f"WHMCS order {order.order_id} has {len(order.service_ids)} services, "
            f"{expected} were ordered: a product id or quantity was dropped; cancel it in WHMCS, "
            "fix the mapping, then Provision / Retry",
            code="SERVICE_COUNT_MISMATCH",
        )


# --- WHMCS calls ---


def find_recorded_order(whmcs: WhmcsClient, order_id: str, recorded: Any) -> WhmcsOrder:
    """The order `WHMCS_Order_ID__c` names, checked to be this Salesforce order's; else
    WhmcsOrderMismatch. One GetOrders call."""
    whmcs_order_id = mapping.parse_positive_int(recorded)
    if whmcs_order_id is None:
        raise WhmcsOrderMismatch(
            f"WHMCS_Order_ID__c {str(recorded)[:30]!r} is not a WHMCS order id; clear it, then "
            "Provision / Retry"
        )
    verdict = recorded_verdict(whmcs.get_orders(order_id=whmcs_order_id), order_id, whmcs_order_id)
    if isinstance(verdict, str):
        raise WhmcsOrderMismatch(verdict)
    return verdict


def find_existing_order(
    whmcs: WhmcsClient,
    client_id: int,
    order_id: str,
    known_ids: Iterable[int],
    since: datetime | None = None,
) -> WhmcsOrder | None:
    """Look in WHMCS for an order an earlier attempt made: a recorded id first, then the client's
    orders newest first, page by page, back to the orders placed before `since` (the earliest
    AddOrder that may have made it), matching the tag in the notes."""
    known = sorted(set(known_ids))
    if known:
        recorded, _ = pick_existing(whmcs.get_orders(order_id=known[-1]), order_id, known)
        if recorded is not None:
            return recorded
    seen: list[dict[str, Any]] = []
    found: WhmcsOrder | None = None
    duplicates: list[int] = []
    for page in _client_orders(whmcs, client_id, since):
        seen.extend(page)
        found, duplicates = pick_existing(seen, order_id, known)
        if found is not None:
            break
    if duplicates:
        log.error(
            "Several live WHMCS orders carry this Salesforce order; using the first",
            extra={"whmcs_order_id": found.order_id if found else None, "duplicates": duplicates},
        )
    return found


def _client_orders(
    whmcs: WhmcsClient, client_id: int, since: datetime | None
) -> Iterator[list[dict[str, Any]]]:
    """The client's orders a page at a time, until `last_page` says the rest are too old."""
    cutoff = since - LOOKUP_DATE_MARGIN if since is not None else None
    for offset in range(0, LOOKUP_MAX_ORDERS, LOOKUP_PAGE):
        page = whmcs.get_orders(client_id=client_id, limit=LOOKUP_PAGE, offset=offset)
        yield page
        if last_page(page, LOOKUP_PAGE, cutoff):
            return
    log.error(
        "WHMCS order lookup stopped at its bound: an earlier order for this Salesforce order "
        "may exist further back; check WHMCS for its SF-ORDER tag",
        extra={"whmcs_client_id": client_id, "orders_read": LOOKUP_MAX_ORDERS},
    )


def create_order(whmcs: WhmcsClient, plan: Plan, gateway: str, notes: str) -> WhmcsOrder:
    result = whmcs.add_order(plan.client_id, gateway, list(plan.lines), notes)
    return WhmcsOrder(result.order_id, tuple(result.service_ids), result.invoice_id)


# --- the whmcs_create step of one run ---


@dataclass
class Placement:
    """whmcs_create for one run. The run lends its checkpoint writers and its lease check, so
    what was sent and what WHMCS answered reach the database before the run moves on."""

    whmcs: WhmcsClient
    order_id: str
    earlier: Sequence[Attempt]
    write_timeout: float
    clock: Callable[[], datetime]
    checkpoint: Callable[..., None]  # committed before it returns
    checkpoint_soon: Callable[..., None]  # may be written while the next call is on the wire
    require_lease: Callable[[str], None]

    def place(self, plan: Plan, gateway: str, notes: str) -> tuple[WhmcsOrder, bool]:
        """The WHMCS order for the plan, and whether an earlier attempt had made it."""
        found = self._earlier_order(plan)
        if found is not None:
            log.info("Resuming WHMCS order from an earlier attempt", extra=ids(found))
            self.checkpoint_soon(whmcs_client_id=plan.client_id, **columns(found))
            return found, True
        self.require_lease("AddOrder")
        sent_at = self.clock()
        self.checkpoint(whmcs_client_id=plan.client_id, create_started_at=sent_at)
        try:
            created = create_order(self.whmcs, plan, gateway, notes)
        except ProvisioningError as exc:
            if not outcome_unknown(exc):
                # A definite refusal (result=error, 4xx, 429, 503): nothing was created, and the
                # next attempt may order at once.
                with contextlib.suppress(SQLAlchemyError):
                    self.checkpoint(create_started_at=None)
                raise
            created = self._look_after(exc, plan, sent_at)
        self.checkpoint_soon(**columns(created))
        log.info("WHMCS order created", extra=ids(created))
        return created, False

    def _earlier_order(self, plan: Plan) -> WhmcsOrder | None:
        if not may_have_ordered(self.earlier):
            return None
        known = [a.whmcs_order_id for a in self.earlier if a.whmcs_order_id]
        since = min(a.create_started_at for a in self.earlier if a.create_started_at is not None)
        found = find_existing_order(self.whmcs, plan.client_id, self.order_id, known, since)
        if found is None:
            window = timedelta(seconds=self.write_timeout) + UNKNOWN_CREATE_MARGIN
            sent = unknown_create_is_recent(self.earlier, self.clock(), window)
            if sent is not None:
                raise OutcomeUnknown(
                    f"an earlier AddOrder sent at {sent:%H:%M:%S} UTC got no answer and WHMCS "
                    "shows no order yet: it may still be running there. Nothing was ordered "
                    f"again; Provision / Retry after {sent + window:%H:%M:%S} UTC",
                    system="whmcs",
                )
        return found

    def _look_after(self, exc: ProvisioningError, plan: Plan, sent_at: datetime) -> WhmcsOrder:
        """AddOrder's outcome is unknown: it may have created the order. Look once."""
        log.warning("AddOrder outcome unknown; looking for the order in WHMCS")
        try:
            found = find_existing_order(self.whmcs, plan.client_id, self.order_id, [], sent_at)
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


def ids(order: WhmcsOrder) -> dict[str, Any]:
    return {
        "whmcs_order_id": order.order_id,
        "whmcs_service_ids": list(order.service_ids),
        "whmcs_invoice_id": order.invoice_id,
    }


def columns(order: WhmcsOrder) -> dict[str, Any]:
    return {
        "whmcs_order_id": order.order_id,
        "whmcs_service_ids": order.service_ids,
        "whmcs_invoice_id": order.invoice_id,
    }
