"""A small SOQL: parse the grammar of docs/design.md, check names against the schema, run it.

    SELECT <field | Rel.Path.Field | (SELECT ... FROM ChildRel ...)>, ...  FROM <Object>
    [WHERE <path> (= | != | < | <= | > | >= | IN (...)) <literal> [AND ...]]
    [ORDER BY <path> [ASC|DESC], ...] [LIMIT n]

Literals: 'text', numbers, true/false/null, and dateTimes as Salesforce writes them, unquoted
(2026-04-09T18:31:40Z, with optional milliseconds and a +hh:mm offset).

Errors are `SoqlError(code, message)` with Salesforce's codes and message shapes: syntax is
MALFORMED_QUERY, an unknown field or parent relationship INVALID_FIELD, an unknown object or
child relationship INVALID_TYPE, a literal of the wrong type INVALID_QUERY_FILTER_OPERATOR.
Pure: records come from a `Source`, the clock is not read.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sandbox.salesforce.schema import NUMBER_TYPES, TEXT_TYPES, Field, SObject, sobject
from shared.sfid import is_valid_id, to18


class SoqlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Source(Protocol):
    def records(self, sobject: str) -> Iterable[dict[str, Any]]: ...

    def get(self, sobject: str, record_id: str) -> dict[str, Any] | None: ...


# --- syntax ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # name, string, number, op, end
    text: str
    pos: int


@dataclass(frozen=True)
class Literal:
    kind: str  # string, number, boolean, null
    value: Any
    pos: int


@dataclass(frozen=True)
class Path:
    text: str  # as written: "PricebookEntry.Product2.Name"
    pos: int


@dataclass(frozen=True)
class Condition:
    path: Path
    op: str  # "=", "!=", "<", "<=", ">", ">=", "IN"
    values: tuple[Literal, ...]


@dataclass(frozen=True)
class Query:
    items: tuple[Path | Query, ...]  # a nested Query is a child-relationship subquery
    sobject: Path
    where: tuple[Condition, ...] = ()
    order_by: tuple[tuple[Path, bool], ...] = ()  # (path, descending)
    limit: int | None = None


_TOKENS = re.compile(
    r"""(?P<ws>\s+)
    |(?P<string>'(?:[^'\\]|\\.)*')
    |(?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))
    |(?P<number>[-+]?\d+(?:\.\d+)?(?![\w.]))
    |(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)
    |(?P<op>!=|<=|>=|=|<|>|,|\(|\))""",
    re.X | re.S,
)
_CONTROL = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}  # either case: \N is \n
_ESCAPES = {
    **_CONTROL,
    **{k.upper(): v for k, v in _CONTROL.items()},
    **{c: c for c in "\"'\\"},
    **{c: "\\" + c for c in "_%"},  # LIKE escapes keep their backslash
}


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKENS.match(text, pos)
        if match is None:
            raise malformed(text, pos, text[pos])
        if match.lastgroup != "ws":
            tokens.append(Token(match.lastgroup or "", match.group(), pos))
        pos = match.end()
    tokens.append(Token("end", "<EOF>", len(text)))
    return tokens


def unquote(text: str, token: Token) -> str:
    def escape(match: re.Match[str]) -> str:
        if match[1] not in _ESCAPES:
            raise SoqlError(
                "MALFORMED_QUERY",
                f"{_where(text, token.pos)}Invalid string literal '{token.text}'. "
                f"Illegal character sequence '\\{match[1]}' in string literal.",
            )
        return _ESCAPES[match[1]]

    return re.sub(r"\\(.)", escape, token.text[1:-1], flags=re.S)


def _where(text: str, pos: int) -> str:
    """The header Salesforce puts on query errors: the line, a caret, Row and Column."""
    row = text.count("\n", 0, pos) + 1
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start : end if end != -1 else len(text)]
    column = pos - start + 1
    return f"\n{line}\n{' ' * (column - 1)}^\nERROR at Row:{row}:Column:{column}\n"


def malformed(text: str, pos: int, token: str) -> SoqlError:
    return SoqlError("MALFORMED_QUERY", f"{_where(text, pos)}unexpected token: '{token}'")


_CLAUSE_WORDS = ("SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "ORDER", "BY", "ASC", "DESC")
_RESERVED = frozenset((*_CLAUSE_WORDS, "LIMIT", "NULL", "TRUE", "FALSE"))
_COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")


def parse_datetime(text: str) -> datetime:
    """A SOQL dateTime literal or a stored REST value (`+0000` offsets) as an aware datetime."""
    text = text.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    return datetime.fromisoformat(text).astimezone(UTC)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.i]

    def fail(self) -> SoqlError:
        return malformed(self.text, self.token.pos, self.token.text)

    def next(self) -> Token:
        token = self.token
        self.i += 1
        return token

    def keyword(self, *words: str) -> bool:
        """Consume the keywords `words` if they come next."""
        for offset, word in enumerate(words):
            token = self.tokens[min(self.i + offset, len(self.tokens) - 1)]
            if token.kind != "name" or token.text.upper() != word:
                return False
        self.i += len(words)
        return True

    def expect_keyword(self, word: str) -> None:
        if not self.keyword(word):
            raise self.fail()

    def expect_op(self, op: str) -> None:
        if self.token.kind != "op" or self.token.text != op:
            raise self.fail()
        self.i += 1

    def path(self, reserved: frozenset[str] = frozenset()) -> Path:
        if self.token.kind != "name" or self.token.text.upper() in reserved:
            raise self.fail()
        token = self.next()
        return Path(token.text, token.pos)

    def query(self, nested: bool = False) -> Query:
        self.expect_keyword("SELECT")
        items = self.listed(lambda: self.item(nested))
        self.expect_keyword("FROM")
        source = self.path()  # "Order" is a keyword and an object name: no reserved words here
        where = self.where() if self.keyword("WHERE") else ()
        order = tuple(self.listed(self.order_key)) if self.keyword("ORDER", "BY") else ()
        limit = self.limit() if self.keyword("LIMIT") else None
        return Query(tuple(items), source, where, order, limit)

    def item(self, nested: bool) -> Path | Query:
        if self.token.text != "(":
            return self.path(_RESERVED)
        if nested:
            raise self.fail()  # Salesforce allows one level of subquery
        self.next()
        sub = self.query(nested=True)
        self.expect_op(")")
        return sub

    def where(self) -> tuple[Condition, ...]:
        conditions = [self.condition()]
        while self.keyword("AND"):
            conditions.append(self.condition())
        return tuple(conditions)

    def condition(self) -> Condition:
        path = self.path(_RESERVED)
        if self.keyword("IN"):
            self.expect_op("(")
            values = self.listed(self.literal)
            self.expect_op(")")
            return Condition(path, "IN", tuple(values))
        if self.token.kind != "op" or self.token.text not in _COMPARISONS:
            raise self.fail()
        op = self.next().text
        return Condition(path, op, (self.literal(),))

    def literal(self) -> Literal:
        token = self.next()
        word = token.text.lower()
        if token.kind == "string":
            return Literal("string", unquote(self.text, token), token.pos)
        if token.kind == "number":
            return Literal("number", float(token.text), token.pos)
        if token.kind == "datetime":
            return Literal("datetime", parse_datetime(token.text), token.pos)
        if token.kind == "name" and word in ("true", "false"):
            return Literal("boolean", word == "true", token.pos)
        if token.kind == "name" and word == "null":
            return Literal("null", None, token.pos)
        self.i -= 1
        raise self.fail()

    def listed(self, parse: Callable[[], Any]) -> list[Any]:
        """One or more `parse`d items, separated by commas."""
        items = [parse()]
        while self.token.text == ",":
            self.next()
            items.append(parse())
        return items

    def order_key(self) -> tuple[Path, bool]:
        path = self.path(_RESERVED)
        if self.keyword("DESC"):
            return path, True
        self.keyword("ASC")
        return path, False

    def limit(self) -> int:
        token = self.next()
        if token.kind != "number" or not token.text.isdigit():
            self.i -= 1
            raise self.fail()
        return int(token.text)


def parse(text: str) -> Query:
    """The syntax tree of `text`, or SoqlError MALFORMED_QUERY."""
    parser = _Parser(text)
    query = parser.query()
    if parser.token.kind != "end":
        raise parser.fail()
    return query


# --- names ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """A field path checked against the schema: the parent hops, then the field."""

    hops: tuple[tuple[str, str, Field], ...]  # (relationship name, target object, fk field)
    field: Field


def _custom_hint(kind: str, suffix: str, after: str = "") -> str:
    """The advice closing Salesforce's unknown-name errors."""
    return (
        f"If you are attempting to use a custom {kind}, be sure to append the '{suffix}' after "
        f"the {after or 'custom ' + kind} name. Please reference your WSDL or the describe call "
        "for the appropriate names."
    )


def _bad_relationship(text: str, pos: int, name: str, part: str = "field path") -> SoqlError:
    hint = _custom_hint("relationship", "__r")
    return SoqlError(
        "INVALID_FIELD",
        f"{_where(text, pos)}Didn't understand relationship '{name}' in {part}. {hint}",
    )


def resolve(text: str, path: Path, root: SObject) -> Resolved:
    *relationships, name = path.text.split(".")
    current, hops = root, []
    for relationship in relationships:
        ref = current.parent(relationship)
        target = sobject(ref.reference_to) if ref else None
        if ref is None or target is None:
            raise _bad_relationship(text, path.pos, relationship)
        hops.append((ref.relationship, target.name, ref))
        current = target
    found = current.field(name)
    if found is None:
        hint = _custom_hint("field", "__c")
        message = f"No such column '{name}' on entity '{current.name}'. {hint}"
        raise SoqlError("INVALID_FIELD", _where(text, path.pos) + message)
    return Resolved(tuple(hops), found)


def _object(text: str, path: Path) -> SObject:
    found = sobject(path.text)
    if found is None:
        hint = _custom_hint("object", "__c", "entity")
        message = f"sObject type '{path.text}' is not supported. {hint}"
        raise SoqlError("INVALID_TYPE", _where(text, path.pos) + message)
    return found


def _child(text: str, path: Path, parent: SObject) -> tuple[str, SObject, str]:
    found = parent.child(path.text)
    target = sobject(found[1]) if found else None
    if found is None or target is None:
        bad = _bad_relationship(text, path.pos, path.text, "FROM part of query call")
        raise SoqlError("INVALID_TYPE", bad.message)
    return found[0], target, found[2]


# --- filters --------------------------------------------------------------------------------

# field type -> (literal kind it takes, type word in the error text)
_LITERAL_FOR_TYPE = {
    "id": ("string", "id"),
    "reference": ("string", "id"),
    **{t: ("string", "string") for t in TEXT_TYPES},
    **{t: ("number", t) for t in NUMBER_TYPES},
    **{t: (t, t) for t in ("boolean", "date", "datetime")},
}


def check_literal(text: str, field: Field, literal: Literal) -> Any:
    """The literal as a comparable value, or the error Salesforce gives for its type."""
    if literal.kind == "null":
        return None
    kind, word = _LITERAL_FOR_TYPE[field.type]
    if literal.kind != kind:
        quoted = "be enclosed in quotes" if kind == "string" else "not be enclosed in quotes"
        raise SoqlError(
            "INVALID_QUERY_FILTER_OPERATOR",
            f"{_where(text, literal.pos)}value of filter criterion for field '{field.name}' "
            f"must be of type {word} and should {quoted}",
        )
    if word == "id":
        if not is_valid_id(literal.value):
            raise SoqlError(
                "INVALID_QUERY_FILTER_OPERATOR",
                f"{_where(text, literal.pos)}invalid ID field: {literal.value}",
            )
        return to18(literal.value)
    return comparable(field, literal.value)


def comparable(field: Field, value: Any) -> Any:
    """Text compares case-insensitively in SOQL; ids and numbers exactly."""
    if value is None:
        return None
    if field.type in TEXT_TYPES:
        return str(value).casefold()
    if field.type in NUMBER_TYPES:
        return float(value)
    if field.type == "datetime" and isinstance(value, str):
        return parse_datetime(value)
    return value


_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _matches(op: str, actual: Any, wanted: tuple[Any, ...]) -> bool:
    if op == "!=":
        return actual != wanted[0]
    if op in _ORDER:  # null is neither before nor after anything
        return actual is not None and wanted[0] is not None and _ORDER[op](actual, wanted[0])
    return actual in wanted


# --- evaluation -----------------------------------------------------------------------------


def attributes(sobject_name: str, record_id: str, version: str) -> dict[str, str]:
    """The `attributes` of a record in a REST reply."""
    url = f"/services/data/v{version}/sobjects/{sobject_name}/{record_id}"
    return {"type": sobject_name, "url": url}


@dataclass(frozen=True)
class _Plan:
    """A query checked against the schema: every name resolved, every literal typed."""

    sobject: SObject
    columns: tuple[Resolved | _Child, ...]
    checks: tuple[tuple[str, Resolved, tuple[Any, ...]], ...]  # (op, path, wanted values)
    order_by: tuple[tuple[Resolved, bool], ...]  # (path, descending)
    limit: int | None


@dataclass(frozen=True)
class _Child:
    """A child-relationship subquery: its key in the reply, the child's foreign key, its plan."""

    name: str
    fk: str
    plan: _Plan


def _plan(text: str, query: Query, root: SObject) -> _Plan:
    """Every name is checked before any row is read, as Salesforce compiles first."""
    columns: list[Resolved | _Child] = []
    seen: set[str] = set()
    for item in query.items:
        if isinstance(item, Query):
            name, child, fk = _child(text, item.sobject, root)
            columns.append(_Child(name, fk, _plan(text, item, child)))
            continue
        columns.append(resolve(text, item, root))
        if item.text.lower() in seen:
            where = _where(text, item.pos)
            raise SoqlError("MALFORMED_QUERY", f"{where}duplicate field selected: {item.text}")
        seen.add(item.text.lower())
    checks = []
    for condition in query.where:
        resolved = resolve(text, condition.path, root)
        wanted = tuple(check_literal(text, resolved.field, v) for v in condition.values)
        checks.append((condition.op, resolved, wanted))
    order_by = tuple((resolve(text, path, root), desc) for path, desc in query.order_by)
    return _Plan(root, tuple(columns), tuple(checks), order_by, query.limit)


@dataclass(frozen=True)
class _Run:
    source: Source
    version: str

    def value(self, record: dict[str, Any] | None, resolved: Resolved) -> Any:
        """A field path's value on `record`, through its parents, as it compares."""
        for _, target, ref in resolved.hops:
            if record is None or record.get(ref.name) is None:
                return None
            record = self.source.get(target, record[ref.name])
        return (
            None if record is None else comparable(resolved.field, record.get(resolved.field.name))
        )

    def sort_key(self, resolved: Resolved, row: dict[str, Any]) -> tuple[bool, Any]:
        value = self.value(row, resolved)
        # Salesforce puts nulls first ascending and last descending.
        return (value is not None, value if value is not None else 0)

    def result(self, plan: _Plan, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """The rows that pass the filter, sorted and cut to the limit, shaped as a reply."""
        chosen = [
            row
            for row in rows
            if all(_matches(op, self.value(row, path), wanted) for op, path, wanted in plan.checks)
        ]
        for resolved, descending in reversed(plan.order_by):
            chosen.sort(key=functools.partial(self.sort_key, resolved), reverse=descending)
        records = [self.shape(plan, r) for r in chosen[: plan.limit]]
        return {"totalSize": len(records), "done": True, "records": records}

    def shape(self, plan: _Plan, record: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": attributes(plan.sobject.name, record["Id"], self.version)
        }
        for column in plan.columns:
            if isinstance(column, Resolved):
                self.put(out, record, column)
                continue
            child = column.plan.sobject.name
            rows = [r for r in self.source.records(child) if r.get(column.fk) == record["Id"]]
            found = self.result(column.plan, rows)
            # Salesforce answers null, not an empty result, for no children.
            out[column.name] = found if found["records"] else None
        return out

    def put(self, out: dict[str, Any], record: dict[str, Any] | None, resolved: Resolved) -> None:
        """Write one field path into `out`, nesting parents as records with attributes."""
        node = out
        for relationship, target, ref in resolved.hops:
            parent_id = record.get(ref.name) if record else None
            record = self.source.get(target, parent_id) if parent_id else None
            if record is None:
                node.setdefault(relationship, None)
                return
            if node.get(relationship) is None:
                node[relationship] = {"attributes": attributes(target, record["Id"], self.version)}
            node = node[relationship]
        node[resolved.field.name] = record.get(resolved.field.name) if record else None


def execute(text: str, source: Source, version: str = "59.0") -> dict[str, Any]:
    """Run the SOQL `text` over `source`: Salesforce's query reply, or SoqlError."""
    query = parse(text)
    plan = _plan(text, query, _object(text, query.sobject))
    return _Run(source, version).result(plan, source.records(plan.sobject.name))
