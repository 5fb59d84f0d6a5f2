"""The WHMCS External API emulator: `/includes/api.php` with WHMCS 8.7's transport, auth and faults.

What it reproduces, because our client must survive each of them:

- PHP form semantics (phpform.py): `pid[0]=` is an array, a repeated `pid=` keeps only the last
  value, a JSON body is never read (the call then has no credentials: 403).
- Auth in WHMCS's order: banned IP, access key or IP allow-list, credentials (identifier/secret,
  the same via username/password, a legacy admin login with an md5 password), then the action:
  empty (400), unknown (403), not in the API role (403). Three failed logins from one IP ban it
  (every later call: `IP Banned`, even with good credentials) until `reset()`.
- `responsetype=json` gives JSON with Laminas' `\\u0022` escaping; without it the reply is NVP
  text (single-object actions) or XML (list actions), never JSON.
- Faults from the shared FaultBook, target `whmcs.<Action>` or `whmcs.*`. In front of PHP (the
  action does not run): `status`, `html`, `nonjson`, `hang`, `reset`, `error`, `warning` with
  `replace`. Around the action (it runs, the write is committed): `php_warning`, `truncated`,
  `warning`, `commit_then_hang`; and `late_commit`: the client hangs, the action runs `delay`
  seconds later. Latency per call: `faults.latency("whmcs.<Action>")`.

Every response carries a PHP session cookie, as WHMCS's does; the request log records whether a
call sent one back (a client that keeps cookies serialises its calls on the PHP session lock).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.faults import Fault, FaultBook
from sandbox.http_server import Drop, Hang, Request, Response
from sandbox.whmcs import wire
from sandbox.whmcs.billing import ActionError, Billing
from sandbox.whmcs.phpform import PhpArray, parse, parse_multipart

API_PATH = "/includes/api.php"
READS = ("GetPayMethods", "GetPaymentMethods", "GetClientsDetails", "GetProducts", "GetOrders")
WRITES = ("AddOrder", "AcceptOrder", "CancelOrder", "PendingOrder", "DeleteOrder")
# normalised action -> (canonical name, Billing method): addorder -> ("AddOrder", "add_order")
ACTIONS = {
    name.lower(): (name, re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower())
    for name in (*READS, "GetOrderStatuses", *WRITES)
}
ALIASES = {"getclientsdata": "getclientsdetails", "getclientsdatabyemail": "getclientsdetails"}
LIST_ACTIONS = {"getorders", "getproducts", "getpaymentmethods", "getorderstatuses"}
CREDENTIAL_FIELDS = ("identifier", "secret", "accesskey", "username", "password")
FRONT_FAULTS = {"status", "html", "nonjson", "hang", "reset", "error", "late_commit"}
BACK_FAULTS = {"php_warning", "truncated", "warning", "commit_then_hang"}
SESSION_COOKIE = "WHMCSy551iLvnhYt7"
MISSING_CREDENTIALS = "Invalid or missing credentials"
LOGIN_FAILED = "Authentication Failed"
BAN_AFTER, BAN_SECONDS = 3, 900.0  # failed logins from one IP, then how long it stays banned
_MD5 = re.compile(r"[0-9a-fA-F]{32}")


def normalise_action(value: Any) -> str:
    """`AddOrder`, `add-order`, `ADDORDER` -> `addorder`; aliases resolved."""
    action = re.sub(r"[^a-z0-9]", "", value.lower()) if isinstance(value, str) else ""
    return ALIASES.get(action, action)


@dataclass
class _Call:
    request: Request
    params: PhpArray
    action: str  # normalised
    name: str  # canonical (AddOrder), or the normalised text of an unknown action
    fmt: str  # json, xml or nvp
    fmt_error: str  # WHMCS's refusal of the `responsetype` asked for, if any
    status: int | None = None
    payload: dict[str, Any] | None = None
    fault: str | None = None
    auth: str = ""  # how the caller logged in: credential or admin

    @property
    def target(self) -> str:
        return f"whmcs.{self.name}"


class WhmcsEmulator:
    def __init__(
        self,
        faults: FaultBook,
        *,
        identifier: str,
        secret: str,
        access_key: str = "",
        admin_username: str = "",
        admin_password: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.faults = faults
        self.identifier = identifier
        self.secret = secret
        self.access_key = access_key
        self.admin_username = admin_username
        self.admin_md5 = hashlib.md5(admin_password.encode()).hexdigest() if admin_password else ""
        self.clock = clock
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget every client, order, log line, ban and setting (faults live in the FaultBook)."""
        with self._lock:
            for timer in getattr(self, "_timers", []):
                timer.cancel()
            self._timers: list[threading.Timer] = []
            self.billing = Billing(self.clock)
            self.requests: list[dict[str, Any]] = []
            self.calls: Counter[str] = Counter()
            self.failed_logins: Counter[str] = Counter()
            self.banned_until: dict[str, float] = {}
            self.allowed_actions: set[str] | None = None
            self.ip_allowlist: set[str] | None = None
            self.trust_forwarded_for = False
            self.invalid_ip_status = 403
            self.numbers_as_strings = False
            self.hex_quotes = True

    def load(self, fixtures: dict[str, Any]) -> dict[str, Any]:
        """Add the `whmcs` part of a fixture document: gateways, clients, products."""
        with self._lock:
            return self.billing.load(fixtures)

    # --- HTTP ---

    def handle(self, request: Request) -> Response:
        if request.path != API_PATH:
            return Response(404, wire.server_page(404), [("Content-Type", wire.HTML_TYPE)])
        if request.method not in ("GET", "POST"):
            return Response(405, wire.server_page(405), [("Content-Type", wire.HTML_TYPE)])
        call = self._call_for(request)
        with self._lock:
            self.calls[call.name or "(empty)"] += 1
        fault = self.faults.on_call(call.target)
        call.fault = fault.kind if fault else None
        try:
            return self._respond(call, fault)
        finally:
            self._log(call)  # a hang or a reset is logged too

    def _call_for(self, request: Request) -> _Call:
        params = parse(request.raw_query)
        if request.method == "POST":
            # PHP fills $_POST only for form content types; a JSON body is simply not read.
            content_type = request.header("Content-Type").lower()
            if content_type.startswith("application/x-www-form-urlencoded"):
                params |= parse(request.body)
            elif content_type.startswith("multipart/form-data"):
                params |= parse_multipart(request.body, request.header("Content-Type"))
        action = normalise_action(params.get("action"))
        name = ACTIONS[action][0] if action in ACTIONS else action
        return _Call(request, params, action, name, *_format(action, params.get("responsetype")))

    def _respond(self, call: _Call, fault: Fault | None) -> Response:
        if fault is None:
            return self._reply(call, *self._answer(call))
        if fault.kind in FRONT_FAULTS:
            return self._front_fault(call, fault)
        if fault.kind == "warning" and fault.params.get("replace"):
            return self._reply(call, 200, {"warning": self._warning_text(fault)})
        if fault.kind not in BACK_FAULTS:
            return Response.text(f"emulator: unknown fault kind {fault.kind!r}", 500)
        return self._back_fault(call, fault, *self._answer(call))

    # --- auth and dispatch ---

    def _answer(self, call: _Call) -> tuple[int, dict[str, Any]]:
        with self._lock:
            refusal = self._authenticate(call) or self._authorise(call)
            if refusal is not None:
                return refusal
            if call.fmt_error:
                return 200, _error(call.fmt_error)
            method = getattr(self.billing, ACTIONS[call.action][1])
            try:
                return 200, method(call.params, self._caller_ip(call.request))
            except ActionError as exc:
                return 200, _error(str(exc))

    def _caller_ip(self, request: Request) -> str:
        forwarded = request.header("X-Forwarded-For").split(",")[0].strip()
        return forwarded if self.trust_forwarded_for and forwarded else request.client_ip

    def _authenticate(self, call: _Call) -> tuple[int, dict[str, Any]] | None:
        ip, params = self._caller_ip(call.request), call.params
        if self.banned_until.get(ip, 0.0) > self.clock():
            return 403, _error("IP Banned")
        sent_key = params.get("accesskey")
        if self.access_key and isinstance(sent_key, str) and sent_key:
            if not _same(sent_key, self.access_key):
                return 403, _error("Invalid Access Key")
        elif self.ip_allowlist is not None and ip not in self.ip_allowlist:
            return self.invalid_ip_status, _error(f"Invalid IP {ip}")
        call.auth, problem = self._login(params)
        if not problem:
            return None
        if problem != MISSING_CREDENTIALS:  # the one refusal that is no failed login
            self._failed_login(ip)
        return 403, _error(problem)

    def _login(self, params: PhpArray) -> tuple[str, str]:
        """("credential" or "admin", "") for a caller who logs in, else ("", the refusal)."""
        identifier, secret = _text(params.get("identifier")), _text(params.get("secret"))
        username, password = _text(params.get("username")), _text(params.get("password"))
        if identifier:
            if not _same(identifier, self.identifier):
                return "", MISSING_CREDENTIALS
            return ("credential", "") if _same(secret, self.secret) else ("", LOGIN_FAILED)
        if not username:
            return "", MISSING_CREDENTIALS
        if _same(username, self.identifier) and _same(password, self.secret):
            return "credential", ""
        if not _MD5.fullmatch(password):
            return "", "Invalid password provided"
        if self.admin_md5 and username == self.admin_username and password == self.admin_md5:
            return "admin", ""
        return "", LOGIN_FAILED

    def _failed_login(self, ip: str) -> None:
        self.failed_logins[ip] += 1
        if self.failed_logins[ip] >= BAN_AFTER:
            self.banned_until[ip] = self.clock() + BAN_SECONDS
            self.failed_logins[ip] = 0

    def _authorise(self, call: _Call) -> tuple[int, dict[str, Any]] | None:
        if not call.action:
            return 400, _error("Empty action request")
        if call.action not in ACTIONS:
            return 403, _error(f'Invalid API Action: "{call.action}" is not a valid API action')
        # API roles bind API credentials; a legacy admin login has the admin's full access.
        role = self.allowed_actions
        if call.auth == "credential" and role is not None and call.action not in role:
            return 403, _error(f'Invalid Permissions: API action "{call.action}" is not allowed')
        return None

    # --- rendering and faults ---

    def _reply(self, call: _Call, status: int, payload: dict[str, Any]) -> Response:
        call.status, call.payload = status, payload
        return Response(status, self._render(call, payload), self._headers(call))

    def _render(self, call: _Call, payload: dict[str, Any]) -> bytes:
        if call.fmt == "json":
            if self.numbers_as_strings:
                payload = wire.numbers_as_strings(payload)
            return wire.json_body(payload, self.hex_quotes)
        if call.fmt == "xml":
            return wire.xml_body(payload, call.action)
        return wire.nvp_body(payload)

    @staticmethod
    def _headers(call: _Call) -> list[tuple[str, str]]:
        content_type = {"json": wire.JSON_TYPE, "xml": "text/xml"}.get(call.fmt, "text/plain")
        cookie = f"{SESSION_COOKIE}={secrets.token_hex(13)}"
        return [
            ("Content-Type", content_type),
            ("X-Powered-By", "PHP/8.1.27"),
            ("Set-Cookie", f"{cookie}; path=/; secure; HttpOnly"),
        ]

    def _front_fault(self, call: _Call, fault: Fault) -> Response:
        """A reply from the web server, the proxy or a firewall: the action never runs."""
        kind, params = fault.kind, fault.params
        if kind == "reset":
            raise Drop()
        if kind == "late_commit":
            self._commit_later(call, float(params.get("delay", 1.0)))
        if kind in ("hang", "late_commit"):
            raise Hang(float(params.get("seconds", 60)))
        if kind == "error":
            message = params.get("message", "Your license key has expired")
            return self._reply(call, 200, _error(message))
        if kind == "nonjson":
            body = b"" if params.get("body") == "empty" else wire.maintenance_page()
            return self._page(call, 200, body)
        return self._status_fault(call, kind, params)

    def _status_fault(self, call: _Call, kind: str, params: dict[str, Any]) -> Response:
        status = int(params.get("status", 502 if kind == "html" else 500))
        body = params.get("body", "html") if kind == "status" else "html"
        if body == "json":
            message = params.get("message") or wire.REASONS.get(status, "Error")
            return self._reply(call, status, _error(message))
        if body == "empty":
            return self._page(call, status, b"")
        page = wire.waf_page() if kind == "status" and status == 403 else wire.server_page(status)
        response = self._page(call, status, page)
        if status in (429, 503):
            response.headers.append(("Retry-After", str(params.get("retry_after", 30))))
        return response

    def _commit_later(self, call: _Call, delay: float) -> None:
        """PHP runs on after the client gave up: the action lands `delay` seconds later."""
        timer = threading.Timer(delay, self._answer, [call])
        timer.daemon = True
        with self._lock:
            self._timers.append(timer)
        timer.start()

    def _page(self, call: _Call, status: int, body: bytes) -> Response:
        call.status = status
        return Response(status, body, [("Content-Type", wire.HTML_TYPE), ("Server", "nginx")])

    def _back_fault(
        self, call: _Call, fault: Fault, status: int, payload: dict[str, Any]
    ) -> Response:
        """The action ran (a write is committed); what reaches the client is damaged or nothing."""
        if fault.kind == "commit_then_hang":
            call.status, call.payload = None, payload
            raise Hang(float(fault.params.get("seconds", 60)))
        if fault.kind == "warning":
            return self._reply(call, status, {**payload, "warning": self._warning_text(fault)})
        response = self._reply(call, status, payload)
        if fault.kind == "php_warning":
            # Output before header() means PHP already sent its default text/html header.
            response.body = wire.php_warning(call.action) + response.body
            response.headers[0] = ("Content-Type", wire.HTML_TYPE)
        else:  # truncated: the connection closed half way through the JSON
            response.body = response.body[: max(len(response.body) // 2, 1)]
        return response

    @staticmethod
    def _warning_text(fault: Fault) -> str:
        default = "Invalid or Missing Payment Information - Please Reload and Try Again"
        return str(fault.params.get("message", default))

    def _log(self, call: _Call) -> None:
        params = {k: v for k, v in call.params.items() if k not in CREDENTIAL_FIELDS}
        payload = call.payload or {}
        entry = {
            "action": call.name,
            "method": call.request.method,
            "ip": call.request.client_ip,
            "at": self.clock(),
            "auth": [k for k in CREDENTIAL_FIELDS if k in call.params],
            "params": params,
            "status": call.status,
            "result": payload.get("result"),
            "message": payload.get("message"),
            "fault": call.fault,
            "cookie": bool(call.request.header("Cookie")),
        }
        with self._lock:
            entry["seq"] = len(self.requests) + 1
            self.requests.append(entry)

    # --- admin ---

    def admin(self, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `whmcs/<op>` admin operations (see docs/design.md)."""
        ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "orders": lambda b: {"orders": self.billing.order_records()},
            "requests": self._admin_requests,
            "counters": lambda b: dict(self.calls),
            "substitutions": lambda b: {
                "substitutions": [dict(s) for s in self.billing.substitutions]
            },
            "set_role": self._admin_set_role,
            "set_client": self.billing.set_client,
            "set_numbers_as_strings": lambda b: self._set_flag("numbers_as_strings", b),
            "set_hex_quotes": lambda b: self._set_flag("hex_quotes", b),
            "set_ip_allowlist": self._admin_set_ip_allowlist,
            "set_order_status": lambda b: {
                "order": self.billing.set_order_status(int(b["order_id"]), b["status"])
            },
            "bans": self._admin_bans,
            "load": self.billing.load,
            "reset": self._admin_reset,
        }
        if op not in ops:
            raise ValueError(f"unknown WHMCS admin operation {op!r}")
        with self._lock:
            return ops[op](body or {})

    def _admin_requests(self, body: dict[str, Any]) -> dict[str, Any]:
        wanted = body.get("action")
        if wanted:
            wanted = ACTIONS.get(normalise_action(wanted), (wanted,))[0]
        rows = [r for r in self.requests if not wanted or r["action"] == wanted]
        return {"requests": [dict(r) for r in rows]}

    def _admin_set_role(self, body: dict[str, Any]) -> dict[str, Any]:
        allowed = body.get("allowed_actions")
        role = None if allowed is None else {normalise_action(a) for a in allowed}
        self.allowed_actions = role
        return {"allowed_actions": None if role is None else sorted(role)}

    def _set_flag(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A wire-format switch (numbers_as_strings, hex_quotes): `{enabled: bool}`."""
        setattr(self, name, bool(body.get("enabled", True)))
        return {"enabled": getattr(self, name)}

    def _admin_set_ip_allowlist(self, body: dict[str, Any]) -> dict[str, Any]:
        """`{ips: [...] | null, trust_forwarded_for?, status?}`; status 400 is what older
        WHMCS versions send for `Invalid IP`."""
        ips = None if body.get("ips") is None else set(body["ips"])
        self.ip_allowlist = ips
        self.trust_forwarded_for = bool(body.get("trust_forwarded_for", False))
        self.invalid_ip_status = int(body.get("status", 403))
        return {"ips": None if ips is None else sorted(ips)}

    def _admin_bans(self, body: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        banned = sorted(ip for ip, until in self.banned_until.items() if until > now)
        return {"banned": banned, "failed_logins": dict(self.failed_logins)}

    def _admin_reset(self, body: dict[str, Any]) -> dict[str, Any]:
        self.reset()
        return {}


def _format(action: str, raw: Any) -> tuple[str, str]:
    """The reply's format for `responsetype=raw`, and WHMCS's refusal (in that format) of a
    format it does not offer: list actions default to XML and refuse NVP; others default to NVP."""
    wanted = raw.lower() if isinstance(raw, str) else ""
    listing = action in LIST_ACTIONS
    if wanted in ("json", "xml") or (wanted == "nvp" and not listing):
        return wanted, ""
    if wanted == "nvp":
        return "xml", "This API action only supports the XML or JSON response type formats"
    supported = "Supported formats include: json, xml, nvp"
    refusal = f'Unsupported API response type format "{raw}". {supported}' if wanted else ""
    return "xml" if listing else "nvp", refusal


def _error(message: str) -> dict[str, Any]:
    return {"result": "error", "message": message}


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
