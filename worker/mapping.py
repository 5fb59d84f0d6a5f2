"""Pure mapping rules: Salesforce order items -> WHMCS order lines, and the gateway choice.

WHMCS never refuses a bad line: it drops unknown product ids and quietly substitutes the first
priced billing cycle for an invalid or unpriced one. So every line is checked here, against the
cycle names WHMCS accepts and the GetProducts catalogue, before anything is ordered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import MappingError
from shared.whmcs import OrderLine

RECURRING = ("monthly", "quarterly", "semiannually", "annually", "biennially", "triennially")

# API names and WHMCS's display names (what GetOrders and the admin area show), case-insensitive.
BILLING_CYCLES = {
    **{name: name for name in (*RECURRING, "onetime", "free")},
    "semi-annually": "semiannually",
    "one time": "onetime",
    "one-time": "onetime",
    "free account": "free",
}

# When several kinds of gap exist, the code names the first kind in this order; the message
# lists every gap.
GAP_CODES = (
    "UNMAPPED_PRODUCT",
    "UNKNOWN_WHMCS_PRODUCT",
    "INVALID_BILLING_CYCLE",
    "INVALID_QUANTITY",
)
UNPRICED = -1.0
# GetProducts allowqty: 0 (WHMCS's default) = no qty field, the product is repeated once per unit;
# 1 = qty, one service per unit; 2 = qty, one service holding it ("scaling").
SCALING = 2


@dataclass(frozen=True)
class OrderItem:
    """The fields of one OrderItem (with its Product2) that mapping needs."""

    item_id: str
    number: str
    product_name: str
    product_code: str
    whmcs_pid: Any  # WH_Product_ID__c as Salesforce returns it: number, string or null
    billing_cycle: Any  # Billing_Cycle__c
    quantity: Any


@dataclass(frozen=True)
class Plan:
    """What mapping decided: who is ordering what."""

    client_id: int
    lines: tuple[OrderLine, ...]
    report: tuple[dict[str, Any], ...]
    expected_services: int


@dataclass(frozen=True)
class MappedItem:
    item: OrderItem
    pid: int | None
    cycle: str | None
    quantity: int | None
    gap_code: str = ""
    gap: str = ""
    services: int | None = None  # services WHMCS creates for the line; None: one per unit
    allowqty: int = 0  # the product's GetProducts allowqty: how AddOrder must carry the quantity

    @property
    def ok(self) -> bool:
        return not self.gap_code

    @property
    def expected_services(self) -> int:
        return self.services if self.services is not None else (self.quantity or 0)

    def report(self) -> dict[str, Any]:
        """One row of the item mapping report the runbook tells ops to read."""
        return {
            "item": self.item.number or self.item.item_id,
            "product": self.item.product_name,
            "product_code": self.item.product_code,
            "whmcs_pid": self.pid,
            "billing_cycle": self.cycle or self.item.billing_cycle,
            "quantity": self.quantity,
            "status": "ok" if self.ok else f"{self.gap_code}: {self.gap}",
        }


def normalize_cycle(value: Any) -> str | None:
    """The WHMCS API name of a billing cycle (`Semi-Annually` -> `semiannually`), or None."""
    if not isinstance(value, str):
        return None
    return BILLING_CYCLES.get(" ".join(value.split()).lower())


def parse_positive_int(value: Any) -> int | None:
    """1, 1.0 and "1" are 1; anything fractional, non-positive or non-numeric is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and value == int(value) and value > 0:
        return int(value)
    return None


def cycle_priced(product: Mapping[str, Any], cycle: str) -> bool:
    """Whether WHMCS would honour `cycle` for this GetProducts product instead of substituting.

    The client's currency is not known without an extra call, so a recurring cycle must be
    priced in every currency the product lists: a silent substitution is worse than a failure
    ops can see.
    """
    paytype = str(product.get("paytype", "recurring")).lower()
    if paytype in ("free", "onetime"):
        return cycle == paytype
    if cycle not in RECURRING:
        return False
    pricing = product.get("pricing")
    if not isinstance(pricing, Mapping) or not pricing:
        return False
    return all(_price(prices, cycle) > UNPRICED for prices in pricing.values())


def map_item(item: OrderItem, catalogue: Mapping[int, Mapping[str, Any]]) -> MappedItem:
    pid = parse_positive_int(item.whmcs_pid)
    cycle = normalize_cycle(item.billing_cycle)
    quantity = parse_positive_int(item.quantity)
    mapped = MappedItem(item, pid, cycle, quantity)
    if pid is None:
        return _gap(mapped, "UNMAPPED_PRODUCT", "no WH_Product_ID__c on the product")
    if cycle is None:
        return _gap(
            mapped, "INVALID_BILLING_CYCLE", f"Billing_Cycle__c {item.billing_cycle!r} unknown"
        )
    if quantity is None:
        return _gap(
            mapped, "INVALID_QUANTITY", f"quantity {item.quantity!r} is not a positive whole number"
        )
    product = catalogue.get(pid)
    if product is None:
        return _gap(mapped, "UNKNOWN_WHMCS_PRODUCT", f"WHMCS has no product {pid}")
    # Every allowqty orders one service per unit (2, "scaling": one service holding the qty);
    # shared/whmcs.py encodes each kind the way WHMCS reads it.
    allowqty = parse_positive_int(product.get("allowqty")) or 0
    mapped = dataclasses.replace(
        mapped, allowqty=allowqty, services=1 if allowqty == SCALING else None
    )
    if not cycle_priced(product, cycle):
        return _gap(
            mapped, "INVALID_BILLING_CYCLE", f"{cycle} is not priced for WHMCS product {pid}"
        )
    return mapped


def map_items(
    items: Iterable[OrderItem], catalogue: Mapping[int, Mapping[str, Any]]
) -> list[MappedItem]:
    return [map_item(item, catalogue) for item in items]


def mapping_error(mapped: list[MappedItem]) -> MappingError | None:
    """One error naming every product to fix, coded by the most basic kind of gap, or None."""
    gaps = [m for m in mapped if not m.ok]
    if not gaps:
        return None
    code = next(c for c in GAP_CODES if any(m.gap_code == c for m in gaps))
    names = "; ".join(f"{_label(m.item)}: {m.gap}" for m in gaps)
    return MappingError(f"fix product mapping: {names}", code=code)


def client_id_for(database_value: int | None, account_value: Any) -> int | None:
    """The WHMCS client: the database's account mapping wins over the Account field."""
    if database_value is not None and database_value > 0:
        return database_value
    return parse_positive_int(account_value)


def gateway_from_pay_methods(pay_methods: Iterable[Mapping[str, Any]]) -> str:
    """The first gateway a stored pay method names ("" for local cards and bank accounts)."""
    for method in pay_methods:
        name = str(method.get("gateway_name") or "").strip()
        if name:
            return name
    return ""


def _gap(mapped: MappedItem, code: str, why: str) -> MappedItem:
    return dataclasses.replace(mapped, gap_code=code, gap=why)


def _label(item: OrderItem) -> str:
    if item.product_code and item.product_code != item.product_name:
        return f"{item.product_name} ({item.product_code})"
    return item.product_name or item.item_id


def _price(prices: Any, cycle: str) -> float:
    if not isinstance(prices, Mapping):
        return UNPRICED
    try:
        return float(str(prices.get(cycle, UNPRICED)).replace(",", ""))
    except ValueError:
        return UNPRICED
