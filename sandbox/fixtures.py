"""Fixture documents (docs/design.md): checking them, loading the Salesforce part, building them.

A document has a `salesforce` part (pricebook, accounts, products, orders with items) and a
`whmcs` part (gateways, clients, products). Records name each other by `ref` or by `Id`; ids not
given are minted. `standard_document(n)` and `demo_document()` build documents for tests and demos.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandbox.salesforce.schema import OBJECTS
from sandbox.salesforce.store import Store, normalise_id

SALESFORCE_KEYS = frozenset({"pricebook", "pricebooks", "accounts", "products", "orders"})
# Keys a fixture record may carry besides its object's fields.
EXTRA_KEYS = {
    "Pricebook2": {"ref"},
    "Account": {"ref"},
    "Product2": {"ref", "UnitPrice", "in_pricebook"},
    "Order": {"ref", "account", "pricebook", "items"},
    "OrderItem": {"ref", "product"},
}
NUMBER_TYPES = ("double", "currency", "int")


class FixtureError(ValueError):
    """The fixture document is not one the sandbox can load; the message says where."""


def split(document: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (salesforce, whmcs) parts of a document, after checking its outline."""
    if not isinstance(document, dict):
        raise FixtureError("a fixture document is a JSON object")
    unknown = set(document) - {"salesforce", "whmcs"}
    if unknown:
        raise FixtureError(f"unknown top-level keys {sorted(unknown)}: use salesforce, whmcs")
    salesforce, whmcs = document.get("salesforce") or {}, document.get("whmcs") or {}
    if not isinstance(salesforce, dict) or not isinstance(whmcs, dict):
        raise FixtureError("salesforce and whmcs are JSON objects")
    unknown = set(salesforce) - SALESFORCE_KEYS
    if unknown:
        raise FixtureError(f"unknown salesforce keys {sorted(unknown)}")
    return salesforce, whmcs


def read(path: str | Path) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FixtureError(f"cannot read fixture file {path}: {exc}") from exc
    split(document)
    return document


# --- loading the Salesforce part --------------------------------------------------------------


class SalesforceLoader:
    """Loads one `salesforce` part into a Store; `refs` maps every ref seen so far to its id."""

    def __init__(self, store: Store, pricebook_id: str, refs: dict[str, str]) -> None:
        self.store = store
        self.pricebook_id = pricebook_id
        self.refs = refs
        self.entries: dict[tuple[str, str], str] = {
            (e["Pricebook2Id"], e["Product2Id"]): e["Id"] for e in store.records("PricebookEntry")
        }

    def load(self, part: dict[str, Any]) -> dict[str, str]:
        """Every ref loaded so far -> its id."""
        if part.get("pricebook") is not None:
            self.portal_pricebook(_record(part["pricebook"], "pricebook"))
        for pricebook in _records(part, "pricebooks"):
            self.insert("Pricebook2", pricebook, {"IsActive": True, "IsStandard": False})
        for account in _records(part, "accounts"):
            self.insert("Account", account, {})
        for product in _records(part, "products"):
            self.product(product)
        for order in _records(part, "orders"):
            self.order(order)
        return dict(self.refs)

    def portal_pricebook(self, fields: dict[str, Any]) -> None:
        """The fixture's price book is the sandbox's Portal one (PORTAL_PRICEBOOK_ID)."""
        values = self.fields("Pricebook2", fields, exclude=frozenset({"Id"}))
        self.store.update("Pricebook2", self.pricebook_id, values)
        self.remember(fields, self.pricebook_id)

    def product(self, fields: dict[str, Any]) -> None:
        """A product, listed in the Portal price book at `UnitPrice` unless `in_pricebook` is
        false (for tests of an order line from another price book)."""
        product_id = self.insert("Product2", fields, {"IsActive": True})
        if fields.get("in_pricebook", True):
            price = _coerce("currency", fields.get("UnitPrice", 0.0), "Product2.UnitPrice")
            self.entry(self.pricebook_id, product_id, price)

    def order(self, fields: dict[str, Any]) -> None:
        pricebook = self.resolve(fields.get("pricebook"), "pricebook") or self.pricebook_id
        defaults = {
            "Status": "Draft",
            "EffectiveDate": datetime.fromtimestamp(self.store.clock(), UTC).date().isoformat(),
            "AccountId": self.resolve(fields.get("account"), "account"),
            "Pricebook2Id": pricebook,
        }
        order_id = self.insert("Order", fields, defaults)
        for index, item in enumerate(fields.get("items") or []):
            self.item(order_id, pricebook, _record(item, f"order items[{index}]"))

    def item(self, order_id: str, pricebook: str, fields: dict[str, Any]) -> None:
        product = self.resolve(fields.get("product"), "product")
        if product is None:
            raise FixtureError(f"order item {fields} names no product")
        listed = self.store.get("Product2", product)
        list_price = fields.get("ListPrice", fields.get("UnitPrice", 0.0))
        entry = self.entry(pricebook, product, float(list_price))
        defaults = {"OrderId": order_id, "PricebookEntryId": entry, "Quantity": 1.0}
        defaults["UnitPrice"] = float(fields.get("UnitPrice", list_price))
        if listed is None:
            defaults["Product2Id"] = product  # a dangling product id, for tests of bad data
        self.insert("OrderItem", fields, defaults, exclude=frozenset({"ListPrice"}))

    def entry(self, pricebook: str, product: str, price: float) -> str:
        key = (pricebook, product)
        if key not in self.entries:
            fields = {"Pricebook2Id": pricebook, "Product2Id": product, "UnitPrice": price}
            self.entries[key] = self.store.insert("PricebookEntry", {**fields, "IsActive": True})
        return self.entries[key]

    def insert(
        self,
        sobject: str,
        fields: dict[str, Any],
        defaults: dict[str, Any],
        exclude: frozenset[str] = frozenset(),
    ) -> str:
        values = {**defaults, **self.fields(sobject, fields, exclude | {"Id"})}
        given = normalise_id(fields["Id"]) if "Id" in fields else None
        if "Id" in fields and given is None:
            raise FixtureError(f"{sobject} Id {fields['Id']!r} is not a Salesforce id")
        record_id = self.store.insert(sobject, values, given)
        self.remember(fields, record_id)
        return record_id

    def fields(
        self, sobject: str, given: dict[str, Any], exclude: frozenset[str]
    ) -> dict[str, Any]:
        """The object's own fields of a fixture record, numbers as floats like Salesforce's."""
        known = {f.name: f for f in OBJECTS[sobject].fields}
        unknown = set(given) - set(known) - EXTRA_KEYS[sobject]
        if unknown:
            raise FixtureError(f"{sobject} fixture has unknown fields {sorted(unknown)}")
        values = {}
        for name, value in given.items():
            if name in known and name not in exclude:
                values[name] = _coerce(known[name].type, value, f"{sobject}.{name}")
        return values

    def resolve(self, value: Any, kind: str) -> str | None:
        if value is None:
            return None
        if value in self.refs:
            return self.refs[value]
        record_id = normalise_id(value)
        if record_id is None:
            raise FixtureError(f"unknown {kind} {value!r}: not a ref loaded so far nor an Id")
        return record_id

    def remember(self, fields: dict[str, Any], record_id: str) -> None:
        if fields.get("ref"):
            self.refs[str(fields["ref"])] = record_id


def _coerce(field_type: str, value: Any, where: str) -> Any:
    if value is None or field_type not in NUMBER_TYPES:
        return value
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise FixtureError(f"{where} must be a number, not {value!r}") from exc


def _record(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FixtureError(f"{where} must be a JSON object")
    return value


def _records(part: dict[str, Any], key: str) -> list[dict[str, Any]]:
    values = part.get(key) or []
    if not isinstance(values, list):
        raise FixtureError(f"salesforce.{key} must be a list")
    return [_record(v, f"salesforce.{key}[{i}]") for i, v in enumerate(values)]


# --- building documents -----------------------------------------------------------------------


def _pricing(monthly: str, annually: str) -> dict[str, dict[str, str]]:
    cycles = ("monthly", "quarterly", "semiannually", "annually", "biennially", "triennially")
    prices = {c: "-1.00" for c in cycles} | {"monthly": monthly, "annually": annually}
    return {"USD": prices}


def whmcs_client(
    client_id: int = 1, *, paymethod: bool = True, email: str = "ada@example.com"
) -> dict[str, Any]:
    client: dict[str, Any] = {
        "id": client_id,
        "firstname": "Ada",
        "lastname": "Lovelace",
        "email": email,
        "status": "Active",
        "defaultgateway": "stripe",
        "currency_code": "USD",
        "paymethods": [],
    }
    if paymethod:
        client["paymethods"] = [
            {
                "type": "RemoteCreditCard",
                "gateway_name": "stripe",
                "description": "Visa 4242",
                "card_last_four": "4242",
            }
        ]
    return client


def standard_document(orders: int = 1, *, paymethod: bool = True) -> dict[str, Any]:
    """One account (ref `acme`, WHMCS client 1), two mapped products, `orders` Draft orders
    (refs o1..oN) of one Fibre 100 line each; the WHMCS client has a card unless told not to."""
    return {
        "salesforce": {
            "pricebook": {"ref": "portal", "Name": "Portal"},
            "accounts": [{"ref": "acme", "Name": "Acme Ltd", "WHMCS_Client_ID__c": "1"}],
            "products": [
                {
                    "ref": "fibre100",
                    "Name": "Fibre 100",
                    "ProductCode": "FIB-100",
                    "WH_Product_ID__c": 1,
                    "Billing_Cycle__c": "Monthly",
                    "IsActive": True,
                    "UnitPrice": 50.0,
                },
                {
                    "ref": "static-ip",
                    "Name": "Static IP",
                    "ProductCode": "IP-1",
                    "WH_Product_ID__c": 2,
                    "Billing_Cycle__c": "Annually",
                    "IsActive": True,
                    "UnitPrice": 50.0,
                },
            ],
            "orders": [
                {
                    "ref": f"o{n}",
                    "account": "acme",
                    "Status": "Draft",
                    "items": [{"product": "fibre100", "Quantity": 1, "UnitPrice": 50.0}],
                }
                for n in range(1, orders + 1)
            ],
        },
        "whmcs": {
            "gateways": [{"module": "stripe", "displayname": "Stripe"}],
            "clients": [whmcs_client(1, paymethod=paymethod)],
            "products": [
                {
                    "pid": 1,
                    "gid": 1,
                    "name": "Fibre 100",
                    "type": "other",
                    "paytype": "recurring",
                    "pricing": _pricing("50.00", "500.00"),
                },
                {
                    "pid": 2,
                    "gid": 1,
                    "name": "Static IP",
                    "type": "other",
                    "paytype": "recurring",
                    "pricing": _pricing("5.00", "50.00"),
                },
            ],
        },
    }


def demo_document() -> dict[str, Any]:
    """The demo's world: three orders for Acme, one with two lines, and a second customer
    (`nocard`, WHMCS client 2) without a pay method, whose order ends Failed with 409."""
    document = standard_document(orders=3)
    salesforce, whmcs = document["salesforce"], document["whmcs"]
    salesforce["orders"][1]["items"].append(
        {"product": "static-ip", "Quantity": 1, "UnitPrice": 50.0}
    )
    salesforce["accounts"].append(
        {"ref": "nocard", "Name": "Babbage & Co", "WHMCS_Client_ID__c": "2"}
    )
    salesforce["orders"].append(
        {
            "ref": "o4",
            "account": "nocard",
            "Status": "Draft",
            "items": [{"product": "fibre100", "Quantity": 1, "UnitPrice": 50.0}],
        }
    )
    whmcs["clients"].append(whmcs_client(2, paymethod=False, email="charles@example.com"))
    return document
