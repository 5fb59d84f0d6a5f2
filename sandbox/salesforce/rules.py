"""What the emulated org accepts in a write (field access, types, picklists, lengths), and
the describe of an object. Pure: the caller says which fields the API user may edit.

Errors carry Salesforce's codes and message shapes; `fields` names the fields at fault.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.salesforce.schema import NUMBER_TYPES, TEXT_TYPES, Field, SObject
from shared.sfid import KEY_PREFIXES, is_valid_id, to18

# How Jackson (Salesforce's JSON reader) names a JSON value it cannot turn into a field value.
JSON_TOKENS = {dict: "START_OBJECT", list: "START_ARRAY", str: "VALUE_STRING", bool: "VALUE_TRUE"}


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    fields: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"message": self.message, "errorCode": self.code, "fields": list(self.fields)}


class _Bad(Exception):
    def __init__(self, code: str, message: str, field: Field | None = None) -> None:
        super().__init__(message)
        self.problem = Problem(code, message, (field.name,) if field else ())


def utf16_length(text: str) -> int:
    """Salesforce measures text in UTF-16 code units (Java strings): an emoji counts as two."""
    return len(text.encode("utf-16-le")) // 2


def _cannot_read(type_word: str, value: Any) -> _Bad:
    token = JSON_TOKENS.get(type(value), "VALUE_NUMBER_INT")
    shown = "{" if token == "START_OBJECT" else "[" if token == "START_ARRAY" else value
    return _Bad(
        "JSON_PARSER_ERROR",
        f"Cannot deserialize instance of {type_word} from {token} value {shown} "
        "or request may be missing a required field",
    )


def _text(field: Field, value: Any) -> str:
    if isinstance(value, dict | list):
        raise _cannot_read("string", value)
    text = json.dumps(value) if isinstance(value, bool) else str(value)
    if field.type == "picklist" and field.restricted and text not in field.picklist:
        message = f"{field.label}: bad value for restricted picklist field: {text}"
        raise _Bad("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", message, field)
    if field.length and utf16_length(text) > field.length:
        message = f"{field.label}: data value too large: {text} (max length={field.length})"
        raise _Bad("STRING_TOO_LONG", message, field)
    return text


def _number(field: Field, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _cannot_read(field.type, value)
    try:
        number = float(value)
    except ValueError:
        raise _cannot_read(field.type, value) from None
    if field.precision and abs(number) >= 10 ** (field.precision - field.scale):
        message = f"{field.label}: value outside of valid range on numeric field: {value}"
        raise _Bad("NUMBER_OUTSIDE_VALID_RANGE", message, field)
    return number


def _boolean(field: Field, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _cannot_read("boolean", value)


def _date(field: Field, value: Any) -> str:
    try:
        return datetime.date.fromisoformat(value).isoformat()
    except (TypeError, ValueError):
        raise _Bad(
            "JSON_PARSER_ERROR",
            f'Cannot deserialize value of type `java.util.Date` from String "{value}": '
            "expected format yyyy-MM-dd",
        ) from None


def _reference(field: Field, value: Any) -> str:
    prefix = KEY_PREFIXES.get(field.reference_to, "")
    if not is_valid_id(value) or not str(value).startswith(prefix):
        message = f"{field.label}: id value of incorrect type: {value}"
        raise _Bad("MALFORMED_ID", message, field)
    return to18(value)


_CONVERTERS: dict[str, Callable[[Field, Any], Any]] = {
    **dict.fromkeys(TEXT_TYPES, _text),
    **dict.fromkeys(NUMBER_TYPES, _number),
    "boolean": _boolean,
    "date": _date,
    "reference": _reference,
}


def check_value(field: Field, value: Any) -> Any:
    """The value as stored, or `_Bad` with Salesforce's error for it."""
    if value is None:
        if not field.nillable:
            message = f"Required fields are missing: [{field.name}]"
            raise _Bad("REQUIRED_FIELD_MISSING", message, field)
        return None
    return _CONVERTERS[field.type](field, value)


def check_write(
    sobject: SObject, body: Any, may_edit: Callable[[Field], bool]
) -> tuple[dict[str, Any], list[Problem]]:
    """(values to store, problems) for a PATCH/POST body; nothing is stored if any problem."""
    if not isinstance(body, dict):
        return {}, [_cannot_read(sobject.name, body).problem]
    unknown = [name for name in body if sobject.field(name) is None]
    if unknown:
        message = f"No such column '{unknown[0]}' on sobject of type {sobject.name}"
        return {}, [Problem("INVALID_FIELD", message, (unknown[0],))]
    fields = [(f, value) for name, value in body.items() if (f := sobject.field(name))]
    locked = [f.name for f, _ in fields if not may_edit(f)]
    if locked:
        message = (
            f"Unable to create/update fields: {', '.join(locked)}. Please check the security "
            "settings of this field and verify that it is read/write for your profile or "
            "permission set."
        )
        return {}, [Problem("INVALID_FIELD_FOR_INSERT_UPDATE", message, tuple(locked))]
    values, problems = {}, []
    for field, value in fields:
        try:
            values[field.name] = check_value(field, value)
        except _Bad as bad:
            problems.append(bad.problem)
    return values, problems


def describe_field(field: Field, editable: bool) -> dict[str, Any]:
    return {
        "name": field.name,
        "label": field.label,
        "type": field.type,
        "length": field.length,
        "precision": field.precision,
        "scale": field.scale,
        "custom": field.name.endswith("__c"),
        "nillable": field.nillable,
        "updateable": editable,
        "createable": editable,
        "picklistValues": [
            {"active": True, "defaultValue": False, "label": v, "validFor": None, "value": v}
            for v in field.picklist
        ],
        "restrictedPicklist": field.restricted,
        "referenceTo": [field.reference_to] if field.reference_to else [],
        "relationshipName": field.relationship or None,
    }


def describe(sobject: SObject, may_edit: Callable[[Field], bool], version: str) -> dict[str, Any]:
    base = f"/services/data/v{version}/sobjects/{sobject.name}"
    return {
        "name": sobject.name,
        "label": sobject.name.removesuffix("__e").removesuffix("__c").replace("_", " "),
        "keyPrefix": KEY_PREFIXES.get(sobject.name),
        "custom": sobject.name.endswith(("__c", "__e")),
        "queryable": not sobject.name.endswith("__e"),
        "updateable": any(may_edit(f) for f in sobject.fields),
        "fields": [describe_field(f, may_edit(f)) for f in sobject.fields],
        "childRelationships": [
            {"childSObject": child, "field": fk, "relationshipName": name}
            for name, (child, fk) in sobject.children.items()
        ],
        "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
    }
