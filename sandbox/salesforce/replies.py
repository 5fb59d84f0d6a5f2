"""How the emulated Salesforce words its replies: REST error lists, and the injected faults.

REST errors are JSON lists of `{"message", "errorCode"}`; the token endpoint's are
`{"error", "error_description"}` objects. Fault kinds: status, html, nonjson, hang, reset,
invalid_session, invalid_session_body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sandbox.faults import Fault
from sandbox.http_server import Drop, Hang, Response
from sandbox.salesforce.rules import Problem

NOT_FOUND = ("NOT_FOUND", "The requested resource does not exist")
SESSION_INVALID = ("INVALID_SESSION_ID", "Session expired or invalid")

# Bodies of injected `status` faults, by HTTP status.
REST_STATUS_ERRORS = {
    400: ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record"),
    401: SESSION_INVALID,
    403: ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    404: NOT_FOUND,
    429: ("REQUEST_LIMIT_EXCEEDED", "Too many requests: retry later."),
    500: (
        "UNKNOWN_EXCEPTION",
        "An unexpected error occurred. Please include this ErrorId if you contact support: "
        "1329485705-52791 (-1270352131)",
    ),
    503: ("SERVER_UNAVAILABLE", "Server is unavailable, please try again later."),
}
TOKEN_STATUS_ERRORS = {
    400: ("invalid_grant", "authentication failure"),
    401: ("invalid_client", "invalid client credentials"),
    403: ("invalid_app_access", "user is not admin approved to access this app"),
    429: ("rate_limit_exceeded", "too many logins: retry later"),
    500: ("unknown_error", "retry your request"),
    503: ("unknown_error", "retry your request"),
}
RETRY_AFTER_STATUSES = (429, 503)
HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>{status} Error</title></head><body>"
    "<h1>{status} Error</h1><p>The server encountered a temporary error.</p></body></html>"
)
MAINTENANCE_PAGE = (
    "<html><head><title>Salesforce - Down for Maintenance</title></head><body>"
    "<p>Salesforce is down for maintenance. Please try again later.</p></body></html>"
)


def error_list(status: int, code: str, message: str, **extra: Any) -> Response:
    return Response.json([{"message": message, "errorCode": code, **extra}], status)


def problems(status: int, found: list[Problem]) -> Response:
    return Response.json([p.as_json() for p in found], status)


def fault_reply(fault: Fault, status_reply: Callable[[Fault], Response]) -> Response:
    """The reply a fault stands for; `reset` and `hang` raise for the server to act out."""
    params = fault.params
    if fault.kind == "reset":
        raise Drop()
    if fault.kind == "hang":
        raise Hang(float(params.get("seconds", 30.0)))
    if fault.kind == "html":
        status = int(params.get("status", 502))
        return Response.text(HTML_PAGE.format(status=status), status, "text/html")
    if fault.kind == "nonjson":
        return Response.text(MAINTENANCE_PAGE, 200, "text/html;charset=UTF-8")
    if fault.kind == "status":
        return status_reply(fault)
    if fault.kind == "invalid_session":
        return error_list(401, *SESSION_INVALID)
    if fault.kind == "invalid_session_body":
        # A 401 whose body is an object, not a list: simple-salesforce chokes on it.
        return Response.json({"errorCode": SESSION_INVALID[0], "message": SESSION_INVALID[1]}, 401)
    return Response.text(f"sandbox: unknown fault kind {fault.kind!r}", 500)


def rest_status(fault: Fault) -> Response:
    status = int(fault.params.get("status", 500))
    code, message = REST_STATUS_ERRORS.get(status, ("UNKNOWN_EXCEPTION", f"HTTP {status}"))
    response = error_list(
        status, fault.params.get("errorCode", code), fault.params.get("message", message)
    )
    if status in RETRY_AFTER_STATUSES:
        response.headers.append(("Retry-After", str(fault.params.get("retry_after", 1))))
    return response


def token_status(fault: Fault) -> Response:
    status = int(fault.params.get("status", 500))
    error, description = TOKEN_STATUS_ERRORS.get(status, ("unknown_error", f"HTTP {status}"))
    body = {
        "error": fault.params.get("error", error),
        "error_description": fault.params.get("error_description", description),
    }
    return Response.json(body, status)
