"""Test helpers: what the code uses of Salesforce, read from the code itself, and the DX source.

The code side is never a list kept here: SOQL comes from the string literals (and the one query
builder) of the packages that talk to Salesforce, PATCH bodies from their `.update("Order", ...)`
calls, and values from the modules' own constants.
"""

from __future__ import annotations

import ast
import importlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import soql
from sandbox.sfmetadata import NAMESPACE
from sandbox.sfschema import sobject
from shared.config import VARIABLES

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "salesforce"
SOURCE = PROJECT / "force-app" / "main" / "default"
# The packages that read or write Salesforce at run time (the worker and subscriber, their
# shared clients, and the operator CLI that runs as the same API user).
PACKAGES = ("worker", "subscriber", "shared", "provisioner")
PLACEHOLDER_ID = "801000000000000AAA"
NS = {"md": NAMESPACE}


def default(name: str) -> str:
    """A configuration variable's default, from shared/config.py's table."""
    found = next(v for v in VARIABLES if v.name == name)
    assert found.default is not None, f"{name} has no default"
    return found.default


def python_files() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):  # subpackages too (provisioner/doctor/)
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            yield module, ast.parse(path.read_text(), str(path))


def rendered(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with each placeholder as a SOQL literal: a
    well-formed Order id inside quotes, a number elsewhere (a date bound, a LIMIT)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not isinstance(node, ast.JoinedStr):
        return None
    text = ""
    for value in node.values:
        if isinstance(value, ast.Constant):
            text += str(value.value)
        else:
            text += PLACEHOLDER_ID if text.endswith("'") else "0"
    return text


def string_literals() -> Iterator[tuple[str, str, str]]:
    """(module, enclosing function, text) of every string literal; an f-string counts once."""
    for module, tree in python_files():
        for function, node in _walk(tree, ""):
            text = rendered(node)
            if text is not None:
                yield module, function, text


def _walk(node: ast.AST, function: str) -> Iterator[tuple[str, ast.AST]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _walk(child, child.name)
        elif isinstance(child, ast.JoinedStr):
            yield function, child  # its parts are not literals of their own
        else:
            yield function, child
            yield from _walk(child, function)


# Modules whose SELECTs are SQL for the fulfilment database, not SOQL for Salesforce.
SQL_MODULES = ("shared.db", "shared.migrations", "shared.retention")


def soql_queries() -> list[tuple[str, str]]:
    """(where, SOQL) of every query the packages send.

    A literal is taken as written (placeholders as an Order id); a query whose select list is
    built at run time is taken from its builder, called with the defaults production runs with.
    """
    builders = {("worker.steps", "order_soql"): _order_soql}
    found = []
    for module, function, text in string_literals():
        if not text.lstrip().startswith("SELECT ") or module.startswith(SQL_MODULES):
            continue
        builder = builders.get((module, function))
        query = builder() if builder else text
        found.append((f"{module}.{function or '<module>'}", query))
    return found


def _order_soql() -> str:
    steps = importlib.import_module("worker.steps")
    return steps.order_soql(PLACEHOLDER_ID, default("SF_ACCOUNT_CLIENT_FIELD"))


@dataclass(frozen=True)
class Selected:
    sobject: str
    field: str


def selected_fields(text: str) -> set[Selected]:
    """Every (object, field) a SOQL query reads, resolved through relationships and subqueries."""
    query = soql.parse(text)
    root = sobject(query.sobject.text)
    assert root is not None, f"unknown object {query.sobject.text} in {text}"
    return _selected(text, query, root)


def _selected(text: str, query: soql.Query, root: Any) -> set[Selected]:
    found: set[Selected] = set()
    paths = [i for i in query.items if isinstance(i, soql.Path)]
    paths += [c.path for c in query.where] + [p for p, _ in query.order_by]
    for path in paths:
        resolved = soql.resolve(text, path, root)
        current = root.name
        for _, target, ref in resolved.hops:
            found.add(Selected(current, ref.name))
            current = target
        found.add(Selected(current, resolved.field.name))
    for sub in (i for i in query.items if isinstance(i, soql.Query)):
        _, child, _ = root.child(sub.sobject.text)
        found |= _selected(text, sub, sobject(child))
    return found


@dataclass(frozen=True)
class Write:
    """One field of a PATCH body the code sends: its value as the code writes it."""

    module: str
    sobject: str
    field: str
    kind: str  # "constant", "none", "truncated" (text[:bound]), "str" (str(<int>))
    value: Any = None  # the constant, or the truncation bound


def writes() -> list[Write]:
    """Every field of every `<client>.update("<Object>", id, {...})` call in the packages."""
    found = []
    for module, tree in python_files():
        for node in ast.walk(tree):
            if _is_update(node):
                sobject_name = node.args[0].value
                body = node.args[2]
                for key, value in zip(body.keys, body.values, strict=True):
                    found.append(_write(module, sobject_name, key.value, value))
    return found


def unreadable_writes() -> list[str]:
    """`.update("<Object>", id, body)` calls whose body is not a dict literal: writes the checks
    cannot see."""
    return [
        f"{module}: {ast.unparse(node)}"
        for module, tree in python_files()
        for node in ast.walk(tree)
        if _is_update_call(node) and not isinstance(node.args[2], ast.Dict)
    ]


def _is_update_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "update"
        and len(node.args) == 3
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def _is_update(node: ast.AST) -> bool:
    return _is_update_call(node) and isinstance(node.args[2], ast.Dict)


def _write(module: str, sobject_name: str, field: str, value: ast.AST) -> Write:
    if isinstance(value, ast.Constant):
        kind = "none" if value.value is None else "constant"
        return Write(module, sobject_name, field, kind, value.value)
    if isinstance(value, ast.Name):
        return Write(module, sobject_name, field, "constant", _constant(module, value.id))
    if isinstance(value, ast.Subscript) and isinstance(value.slice, ast.Slice):
        upper = value.slice.upper
        if value.slice.lower is None and isinstance(upper, ast.Constant):
            return Write(module, sobject_name, field, "truncated", upper.value)
        if value.slice.lower is None and isinstance(upper, ast.Name):
            return Write(module, sobject_name, field, "truncated", _constant(module, upper.id))
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "str":
        return Write(module, sobject_name, field, "str")
    raise AssertionError(
        f"{module} writes {sobject_name}.{field} = {ast.unparse(value)}: the metadata test "
        "cannot tell its type or length; write a constant, text[:LENGTH] or str(<int>)"
    )


def _constant(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


# --- the DX source ----------------------------------------------------------------------------


def xml_files() -> list[Path]:
    return sorted(p for p in PROJECT.rglob("*-meta.xml") if "node_modules" not in p.parts)


def parse(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def flow(name: str) -> ET.Element:
    return parse(SOURCE / "flows" / f"{name}.flow-meta.xml")


def permission_set(name: str) -> ET.Element:
    return parse(SOURCE / "permissionsets" / f"{name}.permissionset-meta.xml")


def texts(root: ET.Element, path: str) -> list[str]:
    return [(e.text or "").strip() for e in root.findall(path, NS)]
