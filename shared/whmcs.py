"""Our WHMCS External API client: one method per action we use, every failure a shared.errors class.

The wire rules that keep orders intact (see the WHMCS reference, sections 1.2 and 5.4):
- arrays go out with explicit indices (`pid[0]=7&billingcycle[0]=monthly`): a repeated bare key
  is read by PHP as its last value only, silently ordering one product instead of several;
- flags are `1`/`0`: PHP reads the string "False" as true;
- `responsetype=json` always; a form body, never JSON (PHP does not read a JSON body at all);
- no cookies: WHMCS keeps an AddOrder cart and an admin login in its PHP session, and calls that
  share a session cookie queue on PHP's session lock.

Failures: timeout -> UpstreamTimeout; refused/reset/TLS -> ConnectionFailed; an auth refusal
(403/401 with a WHMCS error, or a known auth message) -> AuthError, never retried here because
three failed logins ban our IP; any other HTTP >= 400 -> HttpStatusError; HTML, empty or
truncated bodies -> BadResponse; `result=error` -> RemoteError with WHMCS's text.

A PHP warning printed before otherwise complete JSON (hosts with display_errors on) is parsed:
the action ran and the JSON is its real answer, which matters most for AddOrder, where throwing
it away would turn a created order into an unknown outcome. The prefix is logged.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

from shared.config import WhmcsSettings
from shared.errors import (
    AuthError,
    BadResponse,
    ConnectionFailed,
    HttpStatusError,
    MappingError,
    RemoteError,
    UpstreamTimeout,
    short_message,
)
from shared.http import TimeoutSession

log = logging.getLogger(__name__)

SYSTEM = "whmcs"
API_CYCLES = (
    "monthly",
    "quarterly",
    "semiannually",
    "annually",
    "biennially",
    "triennially",
    "onetime",
    "free",
)
NOT_PENDING = "Order ID not found or Status not Pending"
# Messages WHMCS sends for access control and authentication (HTTP 403; 400 on older versions).
AUTH_MESSAGES = (
    "Invalid IP",
    "IP Banned",
    "Invalid Access Key",
    "Invalid or missing credentials",
    "Authentication Failed",
    "Invalid administrative identifier",
    "Administrator Account Disabled",
    "Invalid password provided",
    "Access Denied",
    "Invalid Permissions",
    "Invalid API Action",
)
RESERVED = frozenset({"action", "identifier", "secret", "accesskey", "responsetype"})
SNIPPET = 300  # characters of an unreadable body kept for the log
_MAX_JSON_STARTS = 50
# json raises RecursionError, not ValueError, for nesting deeper than the interpreter's stack.
_UNPARSABLE = (ValueError, RecursionError)
_TITLE = re.compile(r"<title>\s*([^<]{1,80}?)\s*</title>", re.IGNORECASE)


@dataclass(frozen=True)
class OrderLine:
    pid: int
    billing_cycle: str  # an API name: monthly ... triennially, onetime, free
    quantity: int = 1
    allowqty: int = 1  # the product's GetProducts allowqty: 0 ignores `qty`, 1 and 2 honour it


@dataclass(frozen=True)
class AddOrderResult:
    order_id: int
    service_ids: tuple[int, ...]
    invoice_id: int | None


def cart_entries(lines: Iterable[OrderLine]) -> Iterator[tuple[OrderLine, int | None]]:
    """AddOrder's product entries, each with its `qty` (None: send none). A product that does not
    allow quantities (allowqty 0, WHMCS's default) ignores `qty`: it is repeated once per unit,
    as WHMCS's own cart does when a product is added N times. Otherwise one entry carries `qty`
    (allowqty 1: one service per unit; 2, scaling: one service holding the quantity)."""
    for line in lines:
        if line.allowqty:
            yield line, line.quantity
        else:
            yield from ((line, None) for _ in range(line.quantity))


class _NoCookies(http.cookiejar.CookiePolicy):
    """Accept no cookie and send none: every WHMCS call stands alone."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = False

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


class WhmcsClient:
    """Cheap to build; one per job. Never retries: a retry of a write must go through a lookup."""

    def __init__(self, settings: WhmcsSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session or TimeoutSession(settings.connect_timeout, settings.read_timeout)
        self.session.cookies.set_policy(_NoCookies())
        # Like the log scrubber, ignore values too short to scrub without mangling messages.
        credentials = (settings.identifier, settings.secret, settings.access_key)
        self._secrets = tuple(s for s in credentials if len(s) >= 4)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> WhmcsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the actions we use ---

    def get_pay_methods(self, client_id: int) -> list[dict[str, Any]]:
        """The client's stored pay methods; [] means none (the worker's 409)."""
        body = self.call("GetPayMethods", {"clientid": client_id})
        methods = self._rows(body.get("paymethods", []), "GetPayMethods paymethods", "paymethod")
        return [self._coerce(m, ("id", "contact_id"), "GetPayMethods") for m in methods]

    def get_clients_details(self, client_id: int) -> dict[str, Any]:
        """The `client` object (`defaultgateway`, `status`, `currency_code` ...)."""
        body = self.call("GetClientsDetails", {"clientid": client_id})
        fields = ("id", "client_id", "userid", "currency", "groupid")
        return self._coerce(body.get("client"), fields, "GetClientsDetails client")

    def get_payment_methods(self) -> list[dict[str, Any]]:
        """The active gateways, `[{module, displayname}]`; `module` is what AddOrder takes."""
        body = self.call("GetPaymentMethods", {})
        return self._container(body, "paymentmethods", "paymentmethod", ())

    def get_products(self, pids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """The catalogue (or the products among `pids`), with `pricing` per currency."""
        params: dict[str, Any] = {}
        if pids is not None:
            wanted = sorted({int(p) for p in pids})
            if not wanted:
                return []
            params["pid"] = ",".join(str(p) for p in wanted)
        body = self.call("GetProducts", params)
        return self._container(body, "products", "product", ("pid", "gid"))

    def add_order(
        self, client_id: int, payment_method: str, lines: Sequence[OrderLine], notes: str
    ) -> AddOrderResult:
        """One Pending order with one service per unit. The caller checks the service count:
        WHMCS drops unknown products and ignores `qty` where the product does not allow it."""
        params: list[tuple[str, Any]] = [("clientid", client_id), ("paymentmethod", payment_method)]
        for index, (line, qty) in enumerate(cart_entries(_checked(lines))):
            params += [(f"pid[{index}]", line.pid), (f"billingcycle[{index}]", line.billing_cycle)]
            if qty is not None:
                params.append((f"qty[{index}]", qty))
        params += [("noemail", True), ("notes", notes)]
        body = self.call("AddOrder", params, write=True)
        invoice = body.get("invoiceid")
        return AddOrderResult(
            order_id=self._int(body.get("orderid"), "AddOrder orderid"),
            service_ids=self._ids(body.get("serviceids", body.get("productids", ""))),
            invoice_id=(self._int(invoice, "AddOrder invoiceid") or None) if invoice else None,
        )

    def accept_order(
        self, order_id: int, *, autosetup: bool = True, sendemail: bool = False
    ) -> None:
        """Accept a Pending order. Both flags are always sent: sending any optional parameter
        makes WHMCS ignore the product's own auto-setup setting."""
        params = {"orderid": order_id, "autosetup": autosetup, "sendemail": sendemail}
        self.call("AcceptOrder", params, write=True)

    def get_orders(
        self,
        *,
        order_id: int | None = None,
        client_id: int | None = None,
        status: str | None = None,
        limit: int = 25,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Orders newest first (by id), in WHMCS's shape (`notes`, `lineitems.lineitem[].relid`
        ...); `offset` skips that many, to page with `limit`."""
        params = {"id": order_id, "userid": client_id, "status": status}
        body = self.call("GetOrders", {**params, "limitstart": offset, "limitnum": limit})
        fields = ("id", "ordernum", "userid", "contactid", "requestor_id", "invoiceid")
        orders = self._container(body, "orders", "order", fields)
        for order in orders:
            items = order.get("lineitems")
            if isinstance(items, dict):
                rows = self._rows(items.get("lineitem", []), "GetOrders lineitem")
                items["lineitem"] = [
                    self._coerce(i, ("relid",), "GetOrders lineitem") for i in rows
                ]
        return orders

    def cancel_order(self, order_id: int) -> None:
        """Cancel a Pending order (a duplicate), without e-mailing the customer."""
        self.call("CancelOrder", {"orderid": order_id, "noemail": True}, write=True)

    # --- the wire ---

    def call(
        self,
        action: str,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]],
        *,
        write: bool = False,
    ) -> dict[str, Any]:
        """One API call: credentials and responsetype=json added; the decoded success reply."""
        read = self.settings.write_timeout if write else self.settings.read_timeout
        timeout = (self.settings.connect_timeout, read)
        data = self._credentials(action) + encode(params)
        self.session.cookies.clear()
        try:
            reply = self.session.post(
                self.settings.api_url, data=data, timeout=timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise self._transport_error(action, read, exc) from exc
        body = self._decode(action, reply)
        log.debug(
            "WHMCS call",
            extra={"action": action, "status": reply.status_code, "ms": _ms(reply)},
        )
        return body

    def _credentials(self, action: str) -> list[tuple[str, str]]:
        pairs = [("action", action), ("identifier", self.settings.identifier)]
        pairs.append(("secret", self.settings.secret))
        if self.settings.access_key:
            pairs.append(("accesskey", self.settings.access_key))
        return [*pairs, ("responsetype", "json")]

    def _transport_error(
        self, action: str, read_timeout: float, exc: requests.RequestException
    ) -> UpstreamTimeout | ConnectionFailed:
        # requests reports a read timeout while reading the body as a ConnectionError.
        error: UpstreamTimeout | ConnectionFailed
        if isinstance(exc, requests.Timeout) or any(
            isinstance(arg, ReadTimeoutError) for arg in exc.args
        ):
            error = UpstreamTimeout(
                f"WHMCS {action} timed out (read timeout {read_timeout:g}s)", system=SYSTEM
            )
        else:
            error = ConnectionFailed(f"WHMCS {action}: {_transport_reason(exc)}", system=SYSTEM)
        # A write that never left this host (no connection, no TLS) did not happen: callers may
        # treat it as a definite refusal instead of an unknown outcome.
        error.request_sent = not before_sending(exc)
        return error

    def _decode(self, action: str, reply: requests.Response) -> dict[str, Any]:
        """The success reply, or the shared.errors class that says what went wrong."""
        text = reply.content.decode("utf-8", "replace")
        body = self._json(action, text)
        if isinstance(body, dict) and body.get("warning"):
            log.warning(
                "WHMCS reply carried a warning",
                extra={"action": action, "warning": self._short(str(body["warning"]))},
            )
        self._raise_for_status(action, reply.status_code, body, text)
        if not isinstance(body, dict):
            self._unreadable(action, reply, text)
        result = body.get("result")
        if result == "success":
            return body
        if result == "error" or (result is None and body.get("warning")):
            why = _message(body) or str(body.get("warning") or "no message")
            raise RemoteError(self._short(f"WHMCS {action}: {why}"), system=SYSTEM)
        raise BadResponse(f"WHMCS {action} reply has no result", system=SYSTEM)

    def _raise_for_status(self, action: str, status: int, body: Any, text: str) -> None:
        """Auth refusals by their text (WHMCS versions differ in the status), then HTTP errors."""
        message = _message(body)
        if message and (_is_auth(message) or (status in (401, 403) and _is_error(body))):
            code = str(status) if status in (401, 403) else "403"
            refused = f"WHMCS refused {action} (HTTP {status}): {message}"
            raise AuthError(self._short(refused), system=SYSTEM, code=code, status=status)
        if status >= 400:
            detail = f": {message}" if message else f" ({_kind_of(text)})"
            raise HttpStatusError(
                self._short(f"WHMCS {action} answered HTTP {status}{detail}"),
                system=SYSTEM,
                status=status,
            )

    def _json(self, action: str, text: str) -> Any:
        """The reply's JSON; also when PHP printed warnings before it. None if there is none."""
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except _UNPARSABLE:
            pass
        decoder = json.JSONDecoder()
        for count, match in enumerate(re.finditer(r"\{", text)):
            if count >= _MAX_JSON_STARTS:
                break
            try:
                value, end = decoder.raw_decode(text, match.start())
            except _UNPARSABLE:
                continue
            if isinstance(value, dict) and "result" in value and not text[end:].strip():
                log.warning(
                    "WHMCS printed text before its JSON reply; using the JSON",
                    extra={
                        "action": action,
                        "prefix": self._short(text[: match.start()][:SNIPPET]),
                    },
                )
                return value
        return None

    def _unreadable(self, action: str, reply: requests.Response, text: str) -> NoReturn:
        kind = _kind_of(text)
        log.warning(
            "WHMCS reply was not JSON",
            extra={
                "action": action,
                "status": reply.status_code,
                "content_type": reply.headers.get("Content-Type", ""),
                "body_start": self._short(text[:SNIPPET]),
            },
        )
        raise BadResponse(
            self._short(f"WHMCS {action} answered HTTP {reply.status_code} with {kind}"),
            system=SYSTEM,
            status=reply.status_code,
        )

    # --- defensive parsing: numbers may be strings, containers may be missing ---

    def _container(
        self, body: dict[str, Any], outer: str, inner: str, numeric: Sequence[str]
    ) -> list[dict[str, Any]]:
        """`body[outer][inner]` as a list of dicts; a missing container means none."""
        box = body.get(outer)
        if box in (None, "", []):
            return []
        rows = self._rows(box.get(inner, []) if isinstance(box, dict) else box, f"{outer}")
        return [self._coerce(row, numeric, outer) for row in rows]

    def _rows(self, value: Any, what: str, inner: str = "") -> list[Any]:
        if isinstance(value, dict) and inner and isinstance(value.get(inner), list | dict):
            value = value[inner]  # the XML-shaped {"paymethod": [...]} some versions send
        if isinstance(value, dict):
            return [value]  # a single row where a list belongs
        if not isinstance(value, list):
            raise BadResponse(f"WHMCS {what} is not a list", system=SYSTEM)
        return value

    def _coerce(self, row: Any, numeric: Iterable[str], what: str) -> dict[str, Any]:
        if not isinstance(row, dict):
            raise BadResponse(f"WHMCS {what} is not an object", system=SYSTEM)
        row = dict(row)
        for name in numeric:
            if row.get(name) not in (None, ""):
                row[name] = self._int(row[name], f"{what} {name}")
        return row

    @staticmethod
    def _int(value: Any, what: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(str(value).strip())
        except (TypeError, ValueError):
            raise BadResponse(f"WHMCS {what} is not a number", system=SYSTEM) from None

    def _ids(self, value: Any) -> tuple[int, ...]:
        if isinstance(value, list):
            return tuple(self._int(v, "AddOrder serviceids") for v in value)
        text = str(value if value is not None else "").strip()
        return tuple(self._int(p, "AddOrder serviceids") for p in text.split(",") if p.strip())

    def _short(self, text: str) -> str:
        return short_message(text, self._secrets)


def encode(params: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> list[tuple[str, str]]:
    """Form pairs PHP reads as meant: lists as `k[0]`, `k[1]`; dicts as `k[key]`; bools as 1/0;
    None left out. A bare repeated key never goes out."""
    items = params.items() if isinstance(params, Mapping) else params
    pairs: list[tuple[str, str]] = []
    for key, value in items:
        if key in RESERVED:
            raise ValueError(f"{key!r} is set by the client itself")
        pairs.extend(_pairs(key, value))
    return pairs


def _pairs(key: str, value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [pair for i, v in enumerate(value) for pair in _pairs(f"{key}[{i}]", v)]
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _pairs(f"{key}[{k}]", v)]
    if isinstance(value, bool):
        return [(key, "1" if value else "0")]
    return [(key, str(value))]


def _checked(lines: Sequence[OrderLine]) -> Sequence[OrderLine]:
    """Refuse what WHMCS would silently change: it substitutes a cycle it does not know."""
    if not lines:
        raise MappingError("an order needs at least one line", code="UNMAPPED_PRODUCT")
    for line in lines:
        if line.billing_cycle not in API_CYCLES:
            raise MappingError(
                f"billing cycle {line.billing_cycle!r} is not a WHMCS API cycle",
                code="INVALID_BILLING_CYCLE",
            )
        if line.quantity < 1:
            raise MappingError(f"quantity {line.quantity} is below 1", code="INVALID_QUANTITY")
        if line.pid < 1:
            raise MappingError(f"product id {line.pid} is not valid", code="UNMAPPED_PRODUCT")
    return lines


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return ""


def _is_error(body: Any) -> bool:
    return isinstance(body, dict) and body.get("result") == "error"


def _is_auth(message: str) -> bool:
    return message.startswith(AUTH_MESSAGES)


def _kind_of(text: str) -> str:
    """What an unreadable body looks like, in a few words for the error message."""
    stripped = text.strip()
    if not stripped:
        return "an empty body"
    if stripped.startswith("<"):
        title = _TITLE.search(stripped)
        return f"an HTML page ({title.group(1)})" if title else "an HTML page"
    if stripped.startswith(("{", "[")):
        return "truncated or malformed JSON"
    return "a body that is not JSON"


def before_sending(exc: requests.RequestException) -> bool:
    """Whether the failure happened while connecting (TCP or TLS), before any byte of the
    request went out."""
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError):
        return True
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


def _transport_reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed"
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "reset" in text or "aborted" in text or "remotedisconnected" in text:
        return "connection reset"
    return f"connection failed ({type(exc).__name__})"


def _ms(reply: requests.Response) -> int:
    return int(reply.elapsed.total_seconds() * 1000)
