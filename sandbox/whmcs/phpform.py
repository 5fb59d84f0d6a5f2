"""PHP's reading of query strings and form bodies into arrays, as `$_GET`/`$_POST` see them.

Python's `parse_qs` keeps every value of a repeated key; PHP keeps only the last one unless the
name carries brackets (`pid[]=`, `pid[0]=`, `a[k][]=`). The WHMCS emulator must read requests the
way WHMCS does, or it would accept the very encoding bugs it exists to catch. The rules follow
`php_register_variable_ex` (main/php_variables.c):

- `&` separates pairs; a pair without `=` is an empty string; `+` and `%XX` are decoded first.
- Leading spaces of a name are dropped; `.` and ` ` in the base name become `_`.
- `name[x]` indexes, `name[]` (or `name[ ]`) appends; after a `]` only another `[` continues,
  anything else is ignored (`a[b]c` is `a[b]`).
- An unclosed first bracket is no index at all: `a[b` is the plain name `a_b`; an unclosed later
  bracket is ignored (`a[b][c` is `a[b]`).
- Canonical decimal keys become integers (`"0"` and `0` are the same key, `"01"` is not), and an
  append takes the next integer after the largest one.
- A plain value over an array replaces it, and an index into a plain value turns it into an array.

PHP arrays are returned as dicts (ordered, keys int or str), scalars as str.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qsl

MAX_NESTING = 64  # PHP's max_input_nesting_level: deeper names are dropped whole
_INTEGER_KEY = re.compile(r"(0|-?[1-9][0-9]*)")
_APPEND = None  # a path element meaning `[]`
_INDEXES = re.compile(r"(?:\[[^\]]*\])*")  # the complete `[...]` right after the base name
_INDEX = re.compile(r"\[([^\]]*)\]")

Key = int | str
PhpArray = dict[Key, Any]


def parse(data: str | bytes) -> PhpArray:
    """An `application/x-www-form-urlencoded` body or a query string, read as PHP reads it."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return from_pairs(parse_qsl(text, keep_blank_values=True))


def parse_multipart(body: bytes, content_type: str) -> PhpArray:
    """The fields of a `multipart/form-data` body (uploaded files are left out, as $_POST does)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    pairs = []
    if message.is_multipart():
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str) and not part.get_filename():
                payload = part.get_payload(decode=True)
                text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
                pairs.append((name, text))
    return from_pairs(pairs)


def from_pairs(pairs: Iterable[tuple[str, Any]]) -> PhpArray:
    """Decoded (name, value) pairs registered in order, later ones winning."""
    target: PhpArray = {}
    for name, value in pairs:
        path = split_name(name)
        if path is not None:
            _assign(target, path, value)
    return target


def split_name(name: str) -> list[Key | None] | None:
    """`'a[b][]'` -> `['a', 'b', None]` (None appends); None when PHP drops the variable."""
    base, bracket, rest = name.lstrip(" ").partition("[")
    base = base.replace(" ", "_").replace(".", "_")
    if not base:
        return None
    if bracket and "]" not in rest:
        # An unclosed first bracket is part of the name, with PHP's character replacements.
        tail = re.sub(r"[ .\[]", "_", rest)
        return [_key(f"{base}_{tail}")]
    # The name ends at the last complete index: `a[b]c` is `a[b]`, `a[b][c` too.
    indexes = _INDEX.findall(_INDEXES.match(bracket + rest).group())
    if len(indexes) > MAX_NESTING:
        return None
    return [_key(base), *(_APPEND if i in ("", " ") else _key(i) for i in indexes)]


def as_list(value: Any) -> list[Any]:
    """The values of a PHP array in order, or a scalar as a one-element list (None: empty)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def truthy(value: Any) -> bool:
    """PHP truthiness of a request value: "", "0" and empty arrays are false; "false" is true."""
    if isinstance(value, dict):
        return bool(value)
    return value not in (None, "", "0")


def _key(text: str) -> Key:
    if _INTEGER_KEY.fullmatch(text) and -(2**63) <= int(text) < 2**63:
        return int(text)
    return text


def _next_index(array: PhpArray) -> int:
    integers = [k for k in array if isinstance(k, int)]
    return max(max(integers) + 1, 0) if integers else 0


def _assign(target: PhpArray, path: list[Key | None], value: Any) -> None:
    node = target
    for key in path[:-1]:
        if key is _APPEND:
            child: PhpArray = {}
            node[_next_index(node)] = child
        else:
            existing = node.get(key)
            child = existing if isinstance(existing, dict) else {}
            node[key] = child
        node = child
    last = path[-1]
    node[_next_index(node) if last is _APPEND else last] = value
