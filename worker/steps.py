"""The named fulfilment steps: explicit inputs, data out, errors from shared.errors only.

The orchestrator decides the order, records progress and handles failure; these functions do
one step's work each. Pure decisions (`guard`, `needs_status_update`) take plain data, so they
are tested with tables. Placing the WHMCS order (whmcs_create) has its own home, worker/ordering.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from shared import keys
from shared.connections import redis_unavailable
from shared.errors import (
    InvalidEvent,
    MappingError,
    OrderError,
    OrderNotFound,
    PaymentMethodMissing,
    ProvisioningError,
    RemoteError,
)
from shared.salesforce import SalesforceClient
from shared.sfid import is_valid_id, to18
from shared.whmcs import OrderLine, WhmcsClient
from worker import mapping
from worker.mapping import Plan
from worker.ordering import WhmcsOrder, outcome_unknown, parse_whmcs_order

log = logging.getLogger(__name__)

ACTIVATING, ACTIVATED, FAILED = "Activating", "Activated", "Failed"
PRODUCTS_TTL = 60  # seconds: a product added in WHMCS is usable within a minute (or at once,
# since an unknown pid forces one refresh)


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
    """None to go on; otherwise why this event must leave the order alone. An Activating order
    with WHMCS_Order_ID__c set goes on too: it is finished, not ordered again."""
    if order.activation_status != ACTIVATING:
        return f"status={order.activation_status or 'empty'}"
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
    lines = tuple(OrderLine(m.pid, m.cycle, m.quantity, m.allowqty) for m in mapped)  # type: ignore[arg-type]
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
