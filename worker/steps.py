"""The named fulfilment steps: explicit inputs, data out, errors from shared.errors only.

The orchestrator decides the order, records progress and handles failure; these functions do
one step's work each. Pure decisions (`guard`, `pick_existing`, `unknown_create_is_recent`) take
plain data and `now`, so they are tested with tables.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from shared import keys
from shared.connections import redis_unavailable
from shared.errors import (
    BadResponse,
    ConnectionFailed,
    HttpStatusError,
    InvalidEvent,
    MappingError,
    OrderError,
    OrderNotFound,
    PaymentMethodMissing,
    ProvisioningError,
    RemoteError,
    UpstreamTimeout,
)
from shared.salesforce import SalesforceClient
from shared.sfid import is_valid_id, to18
from shared.whmcs import AddOrderResult, OrderLine, WhmcsClient
from worker import mapping
from worker.records import Attempt

log = logging.getLogger(__name__)

ACTIVATING, ACTIVATED, FAILED = "Activating", "Activated", "Failed"
PRODUCTS_TTL = 60  # seconds: a product added in WHMCS is usable within a minute (or at once,
# since an unknown pid forces one refresh)
# Looking for an order an earlier attempt may have made: the client's orders a page at a time,
# back to the day before that attempt's AddOrder (WHMCS dates are server-local, in a zone we do
# not know: a day covers every offset), but never more than LOOKUP_MAX_ORDERS of them.
LOOKUP_PAGE = 100
LOOKUP_MAX_ORDERS = 1000
LOOKUP_DATE_MARGIN = timedelta(days=1)
DEAD_ORDER_STATUSES = ("Cancelled", "Fraud")


@dataclass(frozen=True)
class Order:
    """The one read of the order (with items) that serves the guard and order_details."""

    id: str
    number: str
    status: str
    activation_status: str | None
    whmcs_order_id: str | None
    error_code: str | None
    error_message: str | None
    account_id: str
    account_name: str
    account_client_value: Any
    pricebook_id: str
    items: tuple[mapping.OrderItem, ...]


@dataclass(frozen=True)
class Plan:
    """What mapping decided: who is ordering what."""

    client_id: int
    lines: tuple[OrderLine, ...]
    report: tuple[dict[str, Any], ...]
    expected_services: int


@dataclass(frozen=True)
class WhmcsOrder:
    order_id: int
    service_ids: tuple[int, ...]
    invoice_id: int | None
    status: str = "Pending"  # as GetOrders reports it; AddOrder creates Pending orders


# --- validation ---


def validate_order_id(raw: Any) -> str:
    """The 18-character Order id, or InvalidEvent: nothing else may reach a SOQL string."""
    if not is_valid_id(raw, "Order"):
        shown = repr(raw)[:60]
        raise InvalidEvent(f"event does not name a well-formed Order id: {shown}")
    return to18(raw)


def order_soql(order_id: str, client_field: str) -> str:
    if not is_valid_id(order_id, "Order"):  # the last line of defence before string building
        raise InvalidEvent("refusing to query a malformed Order id")
    account = "Account.Name" + (
        "" if client_field in ("Id", "Name") else f", Account.{client_field}"
    )
    return (
        "SELECT Id, OrderNumber, Status, AccountId, Pricebook2Id, Activation_Status__c, "
        "Activation_Error_Code__c, Activation_Error_Message__c, WHMCS_Order_ID__c, "
        f"{account}, "
        "(SELECT Id, OrderItemNumber, Quantity, Product2Id, Product2.Name, Product2.ProductCode, "
        "Product2.WH_Product_ID__c, Product2.Billing_Cycle__c FROM OrderItems) "
        f"FROM Order WHERE Id = '{order_id}'"
    )


def read_order(sf: SalesforceClient, order_id: str, client_field: str) -> Order:
    records = sf.query(order_soql(order_id, client_field))
    if not records:
        raise OrderNotFound(f"Salesforce has no Order {order_id}")
    record = records[0]
    items = _item_records(sf, record.get("OrderItems"))
    return parse_order(record, items, client_field)


def parse_order(record: Mapping[str, Any], items: Iterable[Mapping[str, Any]], client_field: str):
    account = record.get("Account") or {}
    parsed = sorted((_item(i) for i in items), key=lambda i: (i.number, i.item_id))
    return Order(
        id=str(record.get("Id") or ""),
        number=str(record.get("OrderNumber") or ""),
        status=str(record.get("Status") or ""),
        activation_status=record.get("Activation_Status__c"),
        whmcs_order_id=record.get("WHMCS_Order_ID__c"),
        error_code=record.get("Activation_Error_Code__c"),
        error_message=record.get("Activation_Error_Message__c"),
        account_id=str(record.get("AccountId") or ""),
        account_name=str(account.get("Name") or ""),
        account_client_value=account.get(client_field),
        pricebook_id=str(record.get("Pricebook2Id") or ""),
        items=tuple(parsed),
    )


def guard(order: Order) -> str | None:
    """None to go on; otherwise why this event must leave the order alone."""
    if order.activation_status != ACTIVATING:
        return f"status={order.activation_status or 'empty'}"
    if order.whmcs_order_id:
        return f"status=Activating but WHMCS_Order_ID__c={order.whmcs_order_id} is already set"
    return None


# --- sf_status_update ---


def needs_status_update(order: Order) -> bool:
    return (
        order.activation_status != ACTIVATING or bool(order.error_code) or bool(order.error_message)
    )


def sf_status_update(sf: SalesforceClient, order: Order) -> bool:
    """Make the order read Activating with no error; False when it already did (no API call)."""
    if not needs_status_update(order):
        return False
    sf.update(
        "Order",
        order.id,
        {
            "Activation_Status__c": ACTIVATING,
            "Activation_Error_Code__c": None,
            "Activation_Error_Message__c": None,
        },
    )
    return True


# --- order_details ---


def order_details(order: Order, pricebook_id: str) -> Order:
    expected = to18(pricebook_id) if is_valid_id(pricebook_id) else pricebook_id
    actual = to18(order.pricebook_id) if is_valid_id(order.pricebook_id) else order.pricebook_id
    if actual != expected:
        raise OrderError(
            f"order uses price book {order.pricebook_id or 'none'}, not the portal price book "
            f"{pricebook_id}",
            code="WRONG_PRICEBOOK",
        )
    if not order.items:
        raise OrderError("order has no items", code="NO_ITEMS")
    return order


# --- mapping ---


class ProductCatalogue:
    """GetProducts, cached in Redis under whmcs:products for every worker (short TTL)."""

    def __init__(self, connection: redis.Redis, whmcs: WhmcsClient, ttl: int = PRODUCTS_TTL):
        self.redis = connection
        self.whmcs = whmcs
        self.ttl = ttl
        self.fetches = 0

    def products(self, pids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The catalogue; fetched again once if it lacks a wanted pid (a product added since)."""
        wanted = set(pids)
        cached = self._cached()
        if cached is not None and wanted <= cached.keys():
            return cached
        return self._fetch()

    def _cached(self) -> dict[int, dict[str, Any]] | None:
        with redis_unavailable("product cache"):
            raw = self.redis.get(keys.WHMCS_PRODUCTS)
        if raw is None:
            return None
        try:
            return {int(p["pid"]): p for p in json.loads(raw)}
        except (ValueError, KeyError, TypeError):
            return None

    def _fetch(self) -> dict[int, dict[str, Any]]:
        products = self.whmcs.get_products()
        self.fetches += 1
        keep = [_product_summary(p) for p in products if isinstance(p, Mapping) and "pid" in p]
        with redis_unavailable("product cache"):
            self.redis.set(keys.WHMCS_PRODUCTS, json.dumps(keep), ex=self.ttl)
        return {int(p["pid"]): p for p in keep}


def mapping_plan(order: Order, database_client_id: int | None, catalogue: ProductCatalogue) -> Plan:
    client_id = mapping.client_id_for(database_client_id, order.account_client_value)
    mapped = mapping.map_items(order.items, catalogue.products(_wanted_pids(order.items)))
    report = tuple(m.report() for m in mapped)
    problems = []
    if client_id is None:
        problems.append(
            f"account {order.account_name or order.account_id} has no WHMCS client "
            "(no database mapping, no Account field value)"
        )
    error = mapping.mapping_error(mapped)
    log_report(report, ok=error is None and client_id is not None, client_id=client_id)
    if client_id is None:
        detail = "; ".join(problems + ([error.message] if error else []))
        raise MappingError(detail, code="UNMAPPED_ACCOUNT")
    if error is not None:
        raise error
    lines = tuple(OrderLine(m.pid, m.cycle, m.quantity) for m in mapped)  # type: ignore[arg-type]
    return Plan(client_id, lines, report, sum(m.expected_services for m in mapped))


def log_report(report: Sequence[Mapping[str, Any]], *, ok: bool, client_id: int | None) -> None:
    log.log(
        logging.INFO if ok else logging.ERROR,
        "Item mapping report",
        extra={"items": list(report), "whmcs_client_id": client_id, "mapping_ok": ok},
    )


# --- payment method ---


def payment_gateway(whmcs: WhmcsClient, client_id: int, default_gateway: str) -> str:
    """The AddOrder gateway: the pay method's, else the client's default, else the setting."""
    try:
        methods = whmcs.get_pay_methods(client_id)
    except RemoteError as exc:
        raise _client_missing(exc, client_id) from exc
    if not methods:
        raise PaymentMethodMissing(
            f"Payment method missing: WHMCS client {client_id} has none; ask the customer to add "
            "one, then Provision / Retry"
        )
    gateway = mapping.gateway_from_pay_methods(methods)
    if gateway:
        return gateway
    client = whmcs.get_clients_details(client_id)
    gateway = str(_client_fields(client).get("defaultgateway") or "").strip() or default_gateway
    if not gateway:
        raise OrderError(
            f"no gateway for WHMCS client {client_id}: its pay method names none, it has no "
            "default gateway and WHMCS_DEFAULT_GATEWAY is empty",
            code="NO_GATEWAY",
        )
    return gateway


# --- whmcs_create ---


def notes_for(order: Order) -> str:
    return f"Salesforce Order {order.number} {order_tag(order.id)}".replace("  ", " ")


def order_tag(order_id: str) -> str:
    """The idempotency tag in WHMCS notes (18-character ids never prefix one another)."""
    return f"SF-ORDER:{order_id}"


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


def create_order(whmcs: WhmcsClient, plan: Plan, gateway: str, notes: str) -> WhmcsOrder:
    result: AddOrderResult = whmcs.add_order(plan.client_id, gateway, list(plan.lines), notes)
    return WhmcsOrder(result.order_id, tuple(result.service_ids), result.invoice_id)


def outcome_unknown(exc: BaseException) -> bool:
    """A write that failed like this may still have happened in WHMCS."""
    if isinstance(exc, UpstreamTimeout | ConnectionFailed | BadResponse):
        return True
    return isinstance(exc, HttpStatusError) and (exc.status or 0) >= 500


def check_service_count(order: WhmcsOrder, expected: int) -> None:
    if len(order.service_ids) != expected:
        raise OrderError(
            f"WHMCS order {order.order_id} has {len(order.service_ids)} services, "
            f"{expected} were ordered: a product id or quantity was dropped; cancel it in WHMCS, "
            "fix the mapping, then Provision / Retry",
            code="SERVICE_COUNT_MISMATCH",
        )


# --- whmcs_accept ---


def accept_order(whmcs: WhmcsClient, order: WhmcsOrder) -> bool:
    """AcceptOrder (autosetup and welcome e-mail explicit); False when it was already Active."""
    if order.status == "Active":
        return False
    try:
        whmcs.accept_order(order.order_id, autosetup=True, sendemail=True)
        return True
    except ProvisioningError as exc:
        if not (outcome_unknown(exc) or _not_pending(exc)):
            raise
        if _current_status(whmcs, order.order_id, exc) != "Active":
            raise
        log.info(
            "AcceptOrder did not answer cleanly but WHMCS shows the order Active",
            extra={"whmcs_order_id": order.order_id, "error_code": exc.code},
        )
        return True


# --- sf_success_update / failure ---


def sf_success_update(sf: SalesforceClient, order_id: str, whmcs_order_id: int) -> None:
    sf.update(
        "Order",
        order_id,
        {
            "Activation_Status__c": ACTIVATED,
            "WHMCS_Order_ID__c": str(whmcs_order_id),
            "Activation_Error_Code__c": None,
            "Activation_Error_Message__c": None,
        },
    )


def sf_failure_update(sf: SalesforceClient, order_id: str, code: str, message: str) -> None:
    sf.update(
        "Order",
        order_id,
        {
            "Activation_Status__c": FAILED,
            "Activation_Error_Code__c": code[:40],
            "Activation_Error_Message__c": message[:255],
        },
    )


# --- helpers ---


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


def _current_status(whmcs: WhmcsClient, order_id: int, cause: ProvisioningError) -> str:
    try:
        orders = whmcs.get_orders(order_id=order_id)
    except ProvisioningError:
        log.warning("Could not check the order after AcceptOrder", extra={"error_code": cause.code})
        return ""
    found = [o for o in (parse_whmcs_order(r) for r in orders) if o and o.order_id == order_id]
    return found[0].status if found else ""


def _not_pending(exc: ProvisioningError) -> bool:
    return isinstance(exc, RemoteError) and "not pending" in exc.message.lower()


def _client_missing(exc: RemoteError, client_id: int) -> ProvisioningError:
    if "client" in exc.message.lower() and "not found" in exc.message.lower():
        return MappingError(
            f"WHMCS has no client {client_id}: fix the account mapping", code="UNMAPPED_ACCOUNT"
        )
    return exc


def _client_fields(details: Mapping[str, Any]) -> Mapping[str, Any]:
    client = details.get("client")
    return client if isinstance(client, Mapping) else details


def _item_records(sf: SalesforceClient, children: Any) -> list[Mapping[str, Any]]:
    if not isinstance(children, Mapping):
        return []  # Salesforce sends null, not an empty set, for an order without items
    items = list(children.get("records") or [])
    while not children.get("done", True) and children.get("nextRecordsUrl"):
        children = sf.query_more(children["nextRecordsUrl"])
        items.extend(children.get("records") or [])
    return items


def _item(record: Mapping[str, Any]) -> mapping.OrderItem:
    product = record.get("Product2") or {}
    return mapping.OrderItem(
        item_id=str(record.get("Id") or ""),
        number=str(record.get("OrderItemNumber") or ""),
        product_name=str(product.get("Name") or record.get("Product2Id") or ""),
        product_code=str(product.get("ProductCode") or ""),
        whmcs_pid=product.get("WH_Product_ID__c"),
        billing_cycle=product.get("Billing_Cycle__c"),
        quantity=record.get("Quantity"),
    )


def _wanted_pids(items: Iterable[mapping.OrderItem]) -> set[int]:
    return {pid for i in items if (pid := mapping.parse_positive_int(i.whmcs_pid)) is not None}


def _product_summary(product: Mapping[str, Any]) -> dict[str, Any]:
    """What mapping needs of a GetProducts entry (the cache stays small)."""
    return {
        "pid": product["pid"],
        "name": product.get("name", ""),
        "paytype": product.get("paytype", "recurring"),
        "allowqty": product.get("allowqty", 0),
        "pricing": product.get("pricing", {}),
    }
