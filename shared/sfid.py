"""Salesforce record ids: the 15/18-character forms, the checksum suffix, key prefixes.

Pure functions; the worker validates event payloads with them before any value reaches SOQL,
and the sandbox mints realistic ids with them.
"""

from __future__ import annotations

import secrets
import string

_ALNUM = frozenset(string.ascii_letters + string.digits)
_SUFFIX_CHARS = string.ascii_uppercase + "012345"

KEY_PREFIXES = {
    "Order": "801",
    "OrderItem": "802",
    "Account": "001",
    "Product2": "01t",
    "Pricebook2": "01s",
    "PricebookEntry": "01u",
    "User": "005",
    "Organization": "00D",
    "OrderProvisionRequested__e": "e00",
}


def checksum(id15: str) -> str:
    """The three characters Salesforce appends to a 15-character id to make it case-safe."""
    suffix = ""
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        bits = sum(1 << i for i, char in enumerate(chunk) if char.isupper())
        suffix += _SUFFIX_CHARS[bits]
    return suffix


def is_valid_id(value: object, sobject: str | None = None) -> bool:
    """True for a well-formed 15- or 18-character id (of `sobject`'s key prefix, if given)."""
    if not isinstance(value, str) or len(value) not in (15, 18) or not set(value) <= _ALNUM:
        return False
    if sobject is not None and not value.startswith(KEY_PREFIXES[sobject]):
        return False
    return len(value) == 15 or checksum(value[:15]) == value[15:]


def to18(value: str) -> str:
    return value if len(value) == 18 else value + checksum(value)


def new_id(sobject: str, pod: str = "5g") -> str:
    """A fresh 18-character id such as Salesforce would mint (prefix, pod, random body)."""
    body = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(10))
    id15 = KEY_PREFIXES[sobject] + pod + body
    return id15 + checksum(id15)
