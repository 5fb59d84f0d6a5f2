"""Loading a fixture document's `salesforce` part into the emulator's Store (docs/design.md).

Records name each other by `ref` or by `Id`; ids not given are minted. Numbers become floats, as
Salesforce's are; a record's unknown field, a bad id or a dangling ref is a FixtureError.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sandbox.fixtures import FixtureError
from sandbox.salesforce.schema import NUMBER_TYPES, OBJECTS
from sandbox.salesforce.store import Store, normalise_id

# Keys a fixture record may carry besides its object's fields.
EXTRA_KEYS = {
    "Pricebook2": {"ref"},
    "Account": {"ref"},
    "Product2": {"ref", "UnitPrice", "in_pricebook"},
    "Order": {"ref", "account", "pricebook", "items"},
    "OrderItem": {"ref", "product"},
}


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
        values = self.fields("Pricebook2", fields)
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
        own = {name: value for name, value in fields.items() if name != "ListPrice"}  # derived
        self.insert("OrderItem", own, defaults)

    def entry(self, pricebook: str, product: str, price: float) -> str:
        key = (pricebook, product)
        if key not in self.entries:
            fields = {"Pricebook2Id": pricebook, "Product2Id": product, "UnitPrice": price}
            self.entries[key] = self.store.insert("PricebookEntry", {**fields, "IsActive": True})
        return self.entries[key]

    def insert(self, sobject: str, fields: dict[str, Any], defaults: dict[str, Any]) -> str:
        values = {**defaults, **self.fields(sobject, fields)}
        given = normalise_id(fields["Id"]) if "Id" in fields else None
        if "Id" in fields and given is None:
            raise FixtureError(f"{sobject} Id {fields['Id']!r} is not a Salesforce id")
        record_id = self.store.insert(sobject, values, given)
        self.remember(fields, record_id)
        return record_id

    def fields(self, sobject: str, given: dict[str, Any]) -> dict[str, Any]:
        """The object's own fields of a fixture record but its Id, numbers as floats like
        Salesforce's."""
        known = {f.name: f for f in OBJECTS[sobject].fields}
        unknown = set(given) - set(known) - EXTRA_KEYS[sobject]
        if unknown:
            raise FixtureError(f"{sobject} fixture has unknown fields {sorted(unknown)}")
        values = {}
        for name, value in given.items():
            if name in known and name != "Id":
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
