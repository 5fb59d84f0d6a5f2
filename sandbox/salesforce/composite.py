"""Salesforce's composite resource: up to 25 subrequests in one API call, `@{ref.path}`
references to earlier replies, and allOrNone rollback. Subrequests run through the emulator's
own handlers (`dispatch`), so they behave exactly as the same calls made one by one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from sandbox.http_server import Response
from sandbox.salesforce.replies import error_list

MAX_SUBREQUESTS = 25
HALTED = "The transaction was rolled back since another operation in the same transaction failed."
_REFERENCE = re.compile(r"@\{(\w+)\.([\w.\[\]]+)\}")

Dispatch = Callable[[str, str, bytes], Response]  # (method, url, body) -> reply


def run(
    body: Any, dispatch: Dispatch, snapshot: Callable[[], Any], restore: Callable[[Any], None]
) -> Response:
    requests = body.get("compositeRequest") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not 0 < len(requests) <= MAX_SUBREQUESTS:
        message = f"compositeRequest must hold 1 to {MAX_SUBREQUESTS} subrequests"
        return error_list(400, "INVALID_INPUT", message)
    all_or_none = bool(body.get("allOrNone"))
    saved = snapshot() if all_or_none else None
    replies: list[dict[str, Any]] = []
    for sub in requests:
        replies.append(_subrequest(sub, dispatch, replies))
        if all_or_none and replies[-1]["httpStatusCode"] >= 400:
            restore(saved)
            replies = _halted(requests, replies)
            break
    return Response.json({"compositeResponse": replies})


def _subrequest(sub: Any, dispatch: Dispatch, done: list[dict[str, Any]]) -> dict[str, Any]:
    if not isinstance(sub, dict) or not {"method", "url", "referenceId"} <= set(sub):
        message = "method, url and referenceId are required"
        return _reply(None, 400, [{"message": message, "errorCode": "INVALID_INPUT"}])
    try:
        url = _substitute(str(sub["url"]), done)
        payload = _substitute_json(sub.get("body"), done)
    except (LookupError, TypeError) as exc:
        message = f"Invalid reference specified: {exc}"
        return _reply(
            sub["referenceId"], 400, [{"message": message, "errorCode": "PROCESSING_HALTED"}]
        )
    data = json.dumps(payload).encode() if payload is not None else b""
    response = dispatch(str(sub["method"]).upper(), url, data)
    parsed = json.loads(response.body) if response.body else None
    return _reply(sub["referenceId"], response.status, parsed)


def _reply(ref: Any, status: int, body: Any) -> dict[str, Any]:
    return {"body": body, "httpHeaders": {}, "httpStatusCode": status, "referenceId": ref}


def _lookup(done: list[dict[str, Any]], ref: str, path: str) -> Any:
    reply = next((r for r in done if r["referenceId"] == ref), None)
    if reply is None or reply["httpStatusCode"] >= 400:
        raise LookupError(f"no value for {ref}.{path}")
    value: Any = reply["body"]
    for part in re.findall(r"\w+|\[\d+\]", path):
        value = value[int(part[1:-1])] if part.startswith("[") else value[part]
    return value


def _substitute(text: str, done: list[dict[str, Any]]) -> str:
    return _REFERENCE.sub(lambda m: str(_lookup(done, m[1], m[2])), text)


def _substitute_json(value: Any, done: list[dict[str, Any]]) -> Any:
    if isinstance(value, str):
        return _substitute(value, done)
    if isinstance(value, dict):
        return {k: _substitute_json(v, done) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_json(v, done) for v in value]
    return value


def _halted(requests: list[Any], replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """allOrNone after a failure: the failure stands, every other subrequest is rolled back."""
    failed = len(replies) - 1
    halted = [{"message": HALTED, "errorCode": "PROCESSING_HALTED"}]
    out = []
    for index, sub in enumerate(requests):
        ref = sub.get("referenceId") if isinstance(sub, dict) else None
        out.append(replies[index] if index == failed else _reply(ref, 400, halted))
    return out
