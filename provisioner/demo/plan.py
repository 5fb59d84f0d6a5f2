"""What the demo orders and what must come of it: the fixture world, N orders, expected outcomes.

Most orders succeed; a few fail the way real ones do: a customer whose WHMCS client has no pay
method (409), a product nobody mapped to WHMCS (UNMAPPED_PRODUCT) and WHMCS answering AddOrder
with 503. The 503 order is always the last one: the demo turns the fault on only after every
other order has its outcome, so exactly that order meets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sandbox import fixtures

ACTIVATED, FAILED = "Activated", "Failed"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    status: str  # the Activation_Status__c it must end with
    code: str = ""  # the Activation_Error_Code__c it must end with


OK = Scenario("ok", "fulfilled", ACTIVATED)
NO_PAY_METHOD = Scenario("no_pay_method", "WHMCS client without a pay method", FAILED, "409")
UNMAPPED = Scenario("unmapped", "product without WH_Product_ID__c", FAILED, "UNMAPPED_PRODUCT")
WHMCS_DOWN = Scenario("whmcs_503", "WHMCS AddOrder answers 503", FAILED, "503")
FAILURES = (NO_PAY_METHOD, UNMAPPED, WHMCS_DOWN)  # the order they are dropped in as N grows


@dataclass(frozen=True)
class Customer:
    ref: str
    name: str
    client_id: int
    contact: tuple[str, str]
    card: bool = True


@dataclass(frozen=True)
class Product:
    ref: str
    name: str
    code: str
    pid: int | None  # None: never mapped to WHMCS
    cycle: str
    monthly: float
    annually: float

    @property
    def price(self) -> float:
        return self.annually if self.cycle == "Annually" else self.monthly


CUSTOMERS = (
    Customer("acme", "Acme Ltd", 1, ("Ada", "Lovelace")),
    Customer("globex", "Globex Corporation", 2, ("Grace", "Hopper")),
    Customer("initech", "Initech", 3, ("Alan", "Turing")),
    Customer("hooli", "Hooli", 4, ("Katherine", "Johnson")),
    Customer("northwind", "Northwind Cafe", 5, ("Edsger", "Dijkstra"), card=False),
)
PRODUCTS = (
    Product("fibre100", "Fibre 100", "FIB-100", 1, "Monthly", 50.0, 500.0),
    Product("fibre500", "Fibre 500", "FIB-500", 2, "Monthly", 80.0, 800.0),
    Product("static-ip", "Static IPv4", "IP-STATIC", 3, "Annually", 5.0, 50.0),
    Product("router", "Wi-Fi 6 router", "HW-ROUTER", 4, "Monthly", 8.0, 80.0),
    Product("fibre1000", "Fibre 1000 (pilot)", "FIB-1000", None, "Monthly", 120.0, 1200.0),
)
PAYING = ("acme", "globex", "initech", "hooli")
BASKETS = (
    ("fibre100",),
    ("fibre500", "static-ip"),
    ("fibre100", "router"),
    ("fibre500",),
    ("fibre100", "static-ip", "router"),
)
FAILING_ORDERS = {
    NO_PAY_METHOD.name: ("northwind", ("fibre100",)),
    UNMAPPED.name: ("acme", ("fibre1000", "router")),
    WHMCS_DOWN.name: ("globex", ("fibre500",)),
}


@dataclass(frozen=True)
class PlannedOrder:
    ref: str
    scenario: Scenario
    customer: str
    products: tuple[str, ...]


def scenarios_for(count: int) -> list[Scenario]:
    """One scenario per order: each failure once (as long as one order still succeeds), spread
    over the run, with the WHMCS outage last."""
    if count < 1:
        raise ValueError("the demo needs at least one order")
    failures = FAILURES[: min(len(FAILURES), count - 1)]
    plan = [OK] * count
    spots = {NO_PAY_METHOD.name: count // 3, UNMAPPED.name: 2 * count // 3}
    for failure in failures:
        plan[spots.get(failure.name, count - 1)] = failure
    return plan


def plan_orders(count: int) -> list[PlannedOrder]:
    planned = []
    ok_seen = 0
    for index, scenario in enumerate(scenarios_for(count), start=1):
        if scenario is OK:
            customer, basket = PAYING[ok_seen % len(PAYING)], BASKETS[ok_seen % len(BASKETS)]
            ok_seen += 1
        else:
            customer, basket = FAILING_ORDERS[scenario.name]
        planned.append(PlannedOrder(f"order-{index:02d}", scenario, customer, basket))
    return planned


def fixture_document(orders: list[PlannedOrder]) -> dict[str, Any]:
    """The sandbox fixture document (docs/design.md) for the demo's world and these orders."""
    return {
        "salesforce": {
            "pricebook": {"ref": "portal", "Name": "Portal"},
            "accounts": [_account(c) for c in CUSTOMERS],
            "products": [_sf_product(p) for p in PRODUCTS],
            "orders": [_order(o) for o in orders],
        },
        "whmcs": {
            "gateways": [{"module": "stripe", "displayname": "Stripe"}],
            "clients": [_client(c) for c in CUSTOMERS],
            "products": [_whmcs_product(p) for p in PRODUCTS if p.pid is not None],
        },
    }


def _account(customer: Customer) -> dict[str, Any]:
    return {
        "ref": customer.ref,
        "Name": customer.name,
        "WHMCS_Client_ID__c": str(customer.client_id),
    }


def _sf_product(product: Product) -> dict[str, Any]:
    return {
        "ref": product.ref,
        "Name": product.name,
        "ProductCode": product.code,
        "WH_Product_ID__c": product.pid,
        "Billing_Cycle__c": product.cycle,
        "IsActive": True,
        "UnitPrice": product.price,
    }


def _order(order: PlannedOrder) -> dict[str, Any]:
    prices = {p.ref: p.price for p in PRODUCTS}
    return {
        "ref": order.ref,
        "account": order.customer,
        "Status": "Draft",
        "items": [{"product": p, "Quantity": 1, "UnitPrice": prices[p]} for p in order.products],
    }


def _client(customer: Customer) -> dict[str, Any]:
    first, last = customer.contact
    email = f"{first.lower()}@{customer.ref}.example"
    client = fixtures.whmcs_client(customer.client_id, paymethod=customer.card, email=email)
    return {**client, "firstname": first, "lastname": last, "companyname": customer.name}


def _whmcs_product(product: Product) -> dict[str, Any]:
    return {
        "pid": product.pid,
        "gid": 1,
        "name": product.name,
        "type": "other",
        "paytype": "recurring",
        "pricing": fixtures.whmcs_pricing(f"{product.monthly:.2f}", f"{product.annually:.2f}"),
    }


@dataclass(frozen=True)
class Outcome:
    """Where an order stands in Salesforce, and how long after its approval it got there."""

    order_id: str
    number: str
    status: str  # Activation_Status__c: "", Activating, Activated, Failed
    whmcs_order_id: str = ""
    error_code: str = ""
    error_message: str = ""
    seconds: float | None = None

    @property
    def final(self) -> bool:
        return self.status in (ACTIVATED, FAILED)


def outcome_from_record(record: dict[str, Any], approved_at: float | None = None) -> Outcome:
    """An Outcome from a Salesforce Order record (as the sandbox's admin API returns it); with
    the approval's time, the seconds until the record took its final value."""
    status = str(record.get("Activation_Status__c") or "")
    finished_at = sf_time(record.get("LastModifiedDate"))
    seconds = None
    if status in (ACTIVATED, FAILED) and approved_at is not None and finished_at is not None:
        seconds = round(max(0.0, finished_at - approved_at), 2)
    return Outcome(
        order_id=str(record.get("Id") or ""),
        number=str(record.get("OrderNumber") or ""),
        status=status,
        whmcs_order_id=str(record.get("WHMCS_Order_ID__c") or ""),
        error_code=str(record.get("Activation_Error_Code__c") or ""),
        error_message=str(record.get("Activation_Error_Message__c") or ""),
        seconds=seconds,
    )


def sf_time(value: Any) -> float | None:
    """Epoch seconds of a Salesforce datetime (`2026-04-09T18:31:40.517+0000` or `...Z`)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def as_expected(scenario: Scenario, outcome: Outcome) -> bool:
    if outcome.status != scenario.status:
        return False
    if scenario.status == ACTIVATED:
        return bool(outcome.whmcs_order_id) and not outcome.error_code
    return outcome.error_code == scenario.code
