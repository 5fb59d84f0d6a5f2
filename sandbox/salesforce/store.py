"""The Salesforce emulator's records: one table per object, ids minted like Salesforce's,
auto-numbers, and the fields Salesforce derives (ListPrice, TotalPrice, TotalAmount, Product2Id).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sandbox.salesforce.schema import OBJECTS
from shared.sfid import is_valid_id, new_id, to18

ORDER_NUMBER_START = 100
ITEM_NUMBER_START = 200


def sf_datetime(epoch: float, zone: str = "+0000") -> str:
    """REST datetimes: milliseconds and `+0000` (platform events use `Z`)."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}{zone}"


def normalise_id(value: Any) -> str | None:
    """The 18-character form of a well-formed id, else None."""
    return to18(value) if is_valid_id(value) else None


class Store:
    """Records by object and id. Thread-safe: the emulator serves many connections at once."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.tables: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in OBJECTS}
        self.sequences = {"Order": ORDER_NUMBER_START, "OrderItem": ITEM_NUMBER_START}

    def records(self, sobject: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.tables[sobject].values())

    def get(self, sobject: str, record_id: Any) -> dict[str, Any] | None:
        key = normalise_id(record_id)
        with self.lock:
            return self.tables[sobject].get(key) if key else None

    def insert(self, sobject: str, fields: dict[str, Any], record_id: str | None = None) -> str:
        now = sf_datetime(self.clock())
        record: dict[str, Any] = {f.name: None for f in OBJECTS[sobject].fields}
        record.update(fields)
        record["Id"] = record_id or new_id(sobject)
        record["CreatedDate"] = record["LastModifiedDate"] = now
        with self.lock:
            self._number(sobject, record)
            self.tables[sobject][record["Id"]] = record
            self._derive(sobject, record)
        return record["Id"]

    def update(self, sobject: str, record_id: str, fields: dict[str, Any]) -> None:
        with self.lock:
            record = self.tables[sobject][record_id]
            record.update(fields)
            record["LastModifiedDate"] = sf_datetime(self.clock())
            self._derive(sobject, record)

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        with self.lock:
            return copy.deepcopy(self.tables)

    def restore(self, tables: dict[str, dict[str, dict[str, Any]]]) -> None:
        with self.lock:
            self.tables = tables

    def _number(self, sobject: str, record: dict[str, Any]) -> None:
        if sobject not in self.sequences:
            return
        self.sequences[sobject] += 1
        width, field = (8, "OrderNumber") if sobject == "Order" else (10, "OrderItemNumber")
        record[field] = record.get(field) or str(self.sequences[sobject]).zfill(width)

    def _derive(self, sobject: str, record: dict[str, Any]) -> None:
        if sobject == "OrderItem":
            entry = self.tables["PricebookEntry"].get(record.get("PricebookEntryId") or "")
            if entry is not None:
                record["Product2Id"] = entry["Product2Id"]
                record["ListPrice"] = entry["UnitPrice"]
            quantity, price = record.get("Quantity") or 0.0, record.get("UnitPrice") or 0.0
            record["TotalPrice"] = round(float(quantity) * float(price), 2)
            order = self.tables["Order"].get(record.get("OrderId") or "")
            if order is not None:
                self._derive("Order", order)
        elif sobject == "Order":
            items = [i for i in self.tables["OrderItem"].values() if i["OrderId"] == record["Id"]]
            record["TotalAmount"] = round(sum(i["TotalPrice"] or 0.0 for i in items), 2)
