"""Fixture documents (docs/design.md): checking their outline, reading them, building them.

A document has a `salesforce` part (pricebook, accounts, products, orders with items; loaded by
sandbox/salesforce/loader.py) and a `whmcs` part (gateways, clients, products; loaded by the WHMCS
emulator's billing). `standard_document(n)` and `demo_document()` build documents for tests and
demos.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SALESFORCE_KEYS = frozenset({"pricebook", "pricebooks", "accounts", "products", "orders"})


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


# --- building documents -----------------------------------------------------------------------


def whmcs_pricing(monthly: str, annually: str) -> dict[str, dict[str, str]]:
    """A WHMCS product's USD pricing: these two cycles priced, the others disabled (-1.00)."""
    cycles = ("monthly", "quarterly", "semiannually", "annually", "biennially", "triennially")
    prices = {c: "-1.00" for c in cycles} | {"monthly": monthly, "annually": annually}
    return {"USD": prices}


def whmcs_client(
    client_id: int = 1, *, paymethod: bool = True, email: str = "ada@example.com"
) -> dict[str, Any]:
    card = {"type": "RemoteCreditCard", "gateway_name": "stripe", "description": "Visa 4242"}
    return {
        "id": client_id,
        "firstname": "Ada",
        "lastname": "Lovelace",
        "email": email,
        "status": "Active",
        "defaultgateway": "stripe",
        "currency_code": "USD",
        "paymethods": [{**card, "card_last_four": "4242"}] if paymethod else [],
    }


def _product(ref: str, name: str, code: str, pid: int, cycle: str) -> dict[str, Any]:
    """A Salesforce product mapped to WHMCS product `pid`, listed at 50.00."""
    fields = {"Name": name, "ProductCode": code, "IsActive": True, "UnitPrice": 50.0}
    return {"ref": ref, **fields, "WH_Product_ID__c": pid, "Billing_Cycle__c": cycle}


def _order(ref: str, account: str) -> dict[str, Any]:
    """A Draft order of one Fibre 100 line."""
    line = {"product": "fibre100", "Quantity": 1, "UnitPrice": 50.0}
    return {"ref": ref, "account": account, "Status": "Draft", "items": [line]}


def _whmcs_product(pid: int, name: str, monthly: str, annually: str) -> dict[str, Any]:
    kind = {"gid": 1, "type": "other", "paytype": "recurring"}
    return {"pid": pid, **kind, "name": name, "pricing": whmcs_pricing(monthly, annually)}


def standard_document(orders: int = 1, *, paymethod: bool = True) -> dict[str, Any]:
    """One account (ref `acme`, WHMCS client 1), two mapped products, `orders` Draft orders
    (refs o1..oN) of one Fibre 100 line each; the WHMCS client has a card unless told not to."""
    return {
        "salesforce": {
            "pricebook": {"ref": "portal", "Name": "Portal"},
            "accounts": [{"ref": "acme", "Name": "Acme Ltd", "WHMCS_Client_ID__c": "1"}],
            "products": [
                _product("fibre100", "Fibre 100", "FIB-100", 1, "Monthly"),
                _product("static-ip", "Static IP", "IP-1", 2, "Annually"),
            ],
            "orders": [_order(f"o{n}", "acme") for n in range(1, orders + 1)],
        },
        "whmcs": {
            "gateways": [{"module": "stripe", "displayname": "Stripe"}],
            "clients": [whmcs_client(1, paymethod=paymethod)],
            "products": [
                _whmcs_product(1, "Fibre 100", "50.00", "500.00"),
                _whmcs_product(2, "Static IP", "5.00", "50.00"),
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
    salesforce["orders"].append(_order("o4", "nocard"))
    whmcs["clients"].append(whmcs_client(2, paymethod=False, email="charles@example.com"))
    return document
