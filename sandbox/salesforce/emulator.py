"""The Salesforce emulator: OAuth token endpoint, REST API, CometD routing, the approval Flow.

Strict where Salesforce is strict: unknown fields and malformed SOQL are refused, the restricted
picklist and field lengths hold, unknown or revoked tokens get 401 INVALID_SESSION_ID as a JSON
list, and every REST reply carries Sforce-Limit-Info. Faults come from the shared FaultBook on
`sf.token` and `sf.<kind>` (query, patch, get, describe, limits, composite, publish) or `sf.rest`.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sandbox.faults import FaultBook
from sandbox.fixtures import FixtureError
from sandbox.http_server import Request, Response
from sandbox.salesforce import composite, replies, rules, soql
from sandbox.salesforce.cometd_server import CometdServer, bearer_token
from sandbox.salesforce.eventbus import EventBus
from sandbox.salesforce.loader import SalesforceLoader
from sandbox.salesforce.oauth import TokenEndpoint, Tokens
from sandbox.salesforce.pubsub_server import PubSubServer
from sandbox.salesforce.replies import NOT_FOUND, SESSION_INVALID, error_list
from sandbox.salesforce.schema import APPROVED, EVENT_OBJECT, Field, sobject
from sandbox.salesforce.store import Store
from shared.sfid import new_id

CHANNEL = "/event/OrderProvisionRequested__e"
PUBSUB_KEEPALIVE = 270.0
API_KINDS = ("query", "patch", "get", "describe", "limits", "composite", "publish")
VERSIONS = tuple(f"{v}.0" for v in range(31, 65))
DAILY_API_LIMIT = 15_000
# What the approval Flow (Order_Set_Activating_On_Approval) and Provision / Retry assign; a
# Flow's EmptyString in a text field is stored as null.
ACTIVATING = {
    "Activation_Status__c": "Activating",
    "Activation_Error_Code__c": None,
    "Activation_Error_Message__c": None,
}
QUERY_BATCH = 2000  # Salesforce's largest batch; `sf/set_query_batch` lowers it to test paging


def api_label(version: str) -> str:
    """Release names run Winter, Spring, Summer; v59.0 was Winter '24."""
    offset = int(float(version)) - 59
    season = ("Winter", "Spring", "Summer")[offset % 3]
    return f"{season} '{24 + offset // 3:02d}"


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str  # a regular expression for the whole path under /vNN.N/
    kind: str  # the API counter and the fault target `sf.<kind>`
    handler: str


ROUTES = (
    Route("GET", r"query/?", "query", "_query"),
    Route("GET", r"query/(?P<locator>\w+-\d+)/?", "query", "_query_more"),
    Route("GET", r"limits/?", "limits", "_limits"),
    Route("POST", r"composite/?", "composite", "_composite"),
    Route("GET", r"sobjects/(?P<sobject>\w+)/describe/?", "describe", "_describe"),
    Route("POST", r"(?i)sobjects/OrderProvisionRequested__e/?", "publish", "_publish"),
    Route("GET", r"sobjects/(?P<sobject>\w+)/(?P<id>[^/]+)/?", "get", "_get"),
    Route("PATCH", r"sobjects/(?P<sobject>\w+)/(?P<id>[^/]+)/?", "patch", "_patch"),
)


def match_route(method: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
    """(route, its parameters, the methods the path allows) for a path under /vNN.N/."""
    allowed: list[str] = []
    for route in ROUTES:
        found = re.fullmatch(route.pattern, path)
        if found is not None and method == route.method:
            return route, found.groupdict(), allowed
        if found is not None:
            allowed.append(route.method)
    return None, {}, allowed


@dataclass
class Call:
    request: Request
    version: str
    params: dict[str, str]

    def body(self) -> Any:
        """The JSON body, or a Problem as Salesforce words an unreadable one."""
        if not self.request.body:
            return rules.Problem(
                "JSON_PARSER_ERROR",
                "The HTTP entity body is required, but this request has no entity body.",
            )
        try:
            return json.loads(self.request.body)
        except ValueError:
            return rules.Problem(
                "JSON_PARSER_ERROR", "Unexpected character: the body is not valid JSON"
            )


class SalesforceEmulator:
    def __init__(
        self,
        faults: FaultBook,
        app_public_key_pem: bytes,
        *,
        client_id: str,
        username: str,
        cometd_timeout: float = 110.0,
        reconnect_timeout: float = 40.0,
        pricebook_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.faults = faults
        self.clock = clock
        self.base_url = ""  # set by the Sandbox once the server listens
        self.pricebook_id = pricebook_id or new_id("Pricebook2")
        self.user_id = new_id("User")
        self.tokens = Tokens(new_id("Organization"))
        self.oauth = TokenEndpoint(
            self.tokens,
            app_public_key_pem,
            client_id=client_id,
            username=username,
            user_id=self.user_id,
            clock=clock,
        )
        self.bus = EventBus((CHANNEL,), clock=clock, publisher_id=self.user_id)
        self.cometd = CometdServer(
            self.bus,
            faults,
            self.tokens.is_valid,
            timeout=cometd_timeout,
            reconnect_timeout=reconnect_timeout,
        )
        # Keepalives come within 270 s at Salesforce; the sandbox paces them like its long-polls.
        self.pubsub = PubSubServer(
            self.bus, faults, self.tokens, keepalive=min(cometd_timeout, PUBSUB_KEEPALIVE)
        )
        self._lock = threading.Lock()
        self.reset()

    # --- state --------------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.store = Store(self.clock)
            self.refs: dict[str, str] = {}
            self.field_access: dict[tuple[str, str], bool] = {}
            self.api_calls = dict.fromkeys(API_KINDS, 0)
            self.patches: list[dict[str, Any]] = []
            self.cursors: dict[str, list[dict[str, Any]]] = {}
            self.query_batch = QUERY_BATCH
        self.store.insert(
            "Pricebook2",
            {"Name": "Portal", "IsActive": True, "IsStandard": False},
            self.pricebook_id,
        )
        self.store.insert(
            "Pricebook2", {"Name": "Standard Price Book", "IsActive": True, "IsStandard": True}
        )
        self.tokens.revoke_all()
        self.oauth.approved = True
        self.oauth.logins = self.oauth.refusals = 0
        self.bus.reset()
        self.cometd.reset()
        self.pubsub.reset()

    def load(self, part: dict[str, Any]) -> dict[str, str]:
        """Load a fixture document's `salesforce` part, all of it or (FixtureError) none of it;
        every ref loaded so far -> its id."""
        saved, refs = self.store.snapshot(), dict(self.refs)
        try:
            return SalesforceLoader(self.store, self.pricebook_id, self.refs).load(part)
        except FixtureError:
            self.store.restore(saved)
            self.refs = refs
            raise

    def may_edit(self, field: Field, sobject_name: str = "Order") -> bool:
        return field.updateable and self.field_access.get((sobject_name, field.name), True)

    # --- HTTP ---------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        path = request.path
        if path == "/services/oauth2/token":
            return self._token(request)
        if path.startswith("/cometd/"):
            return self.cometd.handle(request)
        if path.rstrip("/") == "/services/data":
            return Response.json(self._versions())
        found = re.fullmatch(r"/services/data/v(\d+\.\d)(?:/(.*))?", path)
        if found is not None:
            return self._rest(request, found[1], found[2] or "")
        return error_list(404, *NOT_FOUND)

    def _token(self, request: Request) -> Response:
        fault = self.faults.on_call("sf.token")
        if fault is not None:
            return replies.fault_reply(fault, replies.token_status)
        return self.oauth.handle(request, self.base_url)

    def _rest(self, request: Request, version: str, path: str) -> Response:
        route, params, allowed = match_route(request.method, path)
        target = f"sf.{route.kind}" if route else "sf.rest"
        fault = self.faults.on_call(target, "sf.rest")
        if fault is not None:
            response = replies.fault_reply(fault, replies.rest_status)
        elif not self.tokens.is_valid(bearer_token(request)):
            response = error_list(401, *SESSION_INVALID)
            response.headers.append(("WWW-Authenticate", "Token"))
        elif version not in VERSIONS:
            response = error_list(404, *NOT_FOUND)
        elif path == "":
            response = Response.json(self._resources(version))
        elif route is None:
            response = self._no_route(request.method, allowed)
        else:
            self._count(route.kind)
            response = getattr(self, route.handler)(Call(request, version, params))
        response.headers.append(("Sforce-Limit-Info", self._limit_info()))
        return response

    def _no_route(self, method: str, allowed: list[str]) -> Response:
        if not allowed:
            return error_list(404, *NOT_FOUND)
        message = f"HTTP Method '{method}' not allowed. Allowed are {','.join(allowed)}"
        return error_list(405, "METHOD_NOT_ALLOWED", message)

    def _count(self, kind: str) -> None:
        with self._lock:
            self.api_calls[kind] += 1

    def _limit_info(self) -> str:
        with self._lock:
            used = sum(self.api_calls.values())
        return f"api-usage={used}/{DAILY_API_LIMIT}"

    # --- REST resources -----------------------------------------------------------------------

    def _versions(self) -> list[dict[str, str]]:
        return [
            {"label": api_label(v), "url": f"/services/data/v{v}", "version": v} for v in VERSIONS
        ]

    @staticmethod
    def _resources(version: str) -> dict[str, str]:
        base = f"/services/data/v{version}"
        names = ("sobjects", "query", "limits", "composite")
        return {name: f"{base}/{name}" for name in names}

    def _query(self, call: Call) -> Response:
        text = (call.request.query.get("q") or [""])[0]
        if not text.strip():
            return error_list(400, "MALFORMED_QUERY", "A query string has to be specified")
        try:
            with self.store.lock:
                result = soql.execute(text, self.store, call.version)
        except soql.SoqlError as error:
            return error_list(400, error.code, error.message)
        for record in result["records"]:
            for name, value in record.items():
                if isinstance(value, dict) and "totalSize" in value:
                    record[name] = self._first_batch(value, call.version)
        return Response.json(self._first_batch(result, call.version))

    def _first_batch(self, result: dict[str, Any], version: str) -> dict[str, Any]:
        """A query result cut to the batch size; the rest waits behind nextRecordsUrl."""
        records = result["records"]
        if len(records) <= self.query_batch:
            return result
        locator = "01g5g" + "".join(secrets.choice("0123456789ABCDEF") for _ in range(13))
        with self._lock:
            self.cursors[locator] = records
        return self._batch(locator, 0, version)

    def _batch(self, locator: str, start: int, version: str) -> dict[str, Any]:
        with self._lock:
            records, size = self.cursors[locator], self.query_batch
        end = start + size
        reply: dict[str, Any] = {"totalSize": len(records), "done": end >= len(records)}
        if end < len(records):
            reply["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{end}"
        reply["records"] = records[start:end]
        return reply

    def _query_more(self, call: Call) -> Response:
        locator, _, start = call.params["locator"].rpartition("-")
        if locator not in self.cursors:
            return error_list(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return Response.json(self._batch(locator, int(start), call.version))

    def _get(self, call: Call) -> Response:
        found = sobject(call.params["sobject"])
        record = self.store.get(found.name, call.params["id"]) if found else None
        if found is None or record is None:
            return error_list(404, *NOT_FOUND)
        names = (call.request.query.get("fields") or [""])[0]
        wanted = [n.strip() for n in names.split(",") if n.strip()] or [
            f.name for f in found.fields
        ]
        fields = [found.field(n) for n in wanted]
        if None in fields:
            missing = wanted[fields.index(None)]
            message = f"No such column '{missing}' on sobject of type {found.name}"
            return error_list(400, "INVALID_FIELD", message)
        out = {"attributes": soql.attributes(found.name, record["Id"], call.version)}
        out.update({f.name: record[f.name] for f in fields if f is not None})
        return Response.json(out)

    def _patch(self, call: Call) -> Response:
        found = sobject(call.params["sobject"])
        record = self.store.get(found.name, call.params["id"]) if found else None
        if found is None or record is None:
            return error_list(404, *NOT_FOUND)
        body = call.body()
        if isinstance(body, rules.Problem):
            return replies.problems(400, [body])
        values, problems = rules.check_write(found, body, lambda f: self.may_edit(f, found.name))
        if problems:
            return replies.problems(400, problems)
        self.store.update(found.name, record["Id"], values)
        with self._lock:
            self.patches.append(
                {"sobject": found.name, "id": record["Id"], "fields": values, "at": self.clock()}
            )
        return Response(204)

    def _describe(self, call: Call) -> Response:
        name = call.params["sobject"]
        found = EVENT_OBJECT if name.lower() == EVENT_OBJECT.name.lower() else sobject(name)
        if found is None:
            return error_list(404, "NOT_FOUND", f"The requested resource does not exist: {name}")
        described = rules.describe(found, lambda f: self.may_edit(f, found.name), call.version)
        return Response.json(described)

    def _limits(self, call: Call) -> Response:
        counts = self.cometd.counters()
        with self._lock:
            used = sum(self.api_calls.values())
        published = len(self.bus.events(CHANNEL))
        return Response.json(
            {
                "DailyApiRequests": {"Max": DAILY_API_LIMIT, "Remaining": DAILY_API_LIMIT - used},
                "DailyDeliveredPlatformEvents": {
                    "Max": 50_000,
                    "Remaining": 50_000 - counts.get("delivered", 0),
                },
                "HourlyPublishedPlatformEvents": {"Max": 250_000, "Remaining": 250_000 - published},
                "DailyStandardVolumePlatformEvents": {"Max": 10_000, "Remaining": 10_000},
            }
        )

    def _publish(self, call: Call) -> Response:
        body = call.body()
        if isinstance(body, rules.Problem):
            return replies.problems(400, [body])
        values, problems = rules.check_write(EVENT_OBJECT, body, lambda f: f.updateable)
        if problems:
            return replies.problems(400, problems)
        self.publish_event(values)
        event_id = new_id("OrderProvisionRequested__e")
        return Response.json({"id": event_id, "success": True, "errors": []}, 201)

    # --- composite ----------------------------------------------------------------------------

    def _composite(self, call: Call) -> Response:
        return composite.run(
            call.body(),
            lambda method, url, body: self._dispatch(call.request, method, url, body),
            self.store.snapshot,
            self.store.restore,
        )

    def _dispatch(self, outer: Request, method: str, url: str, body: bytes) -> Response:
        """A composite subrequest through the same handlers, without its own auth or count."""
        path, _, raw_query = url.partition("?")
        found = re.fullmatch(r"/services/data/v(\d+\.\d)/(.*)", path)
        if found is None or found[1] not in VERSIONS:
            return error_list(404, *NOT_FOUND)
        route, params, allowed = match_route(method, found[2])
        if route is None or route.kind == "composite":
            return self._no_route(method, allowed)
        request = Request(
            method, path, parse_qs(raw_query), outer.headers, body, outer.client_ip, raw_query
        )
        return getattr(self, route.handler)(Call(request, found[1], params))

    # --- the Flow and the platform event ------------------------------------------------------

    def publish_event(
        self, payload: dict[str, Any], event_uuid: str | None = None
    ) -> dict[str, Any]:
        return self.bus.publish(CHANNEL, payload, event_uuid=event_uuid)

    def approve(self, order_id: str, publish: bool = True) -> dict[str, Any] | None:
        """An approval (Status = Activated), the Flow that answers it (Activation_Status__c =
        Activating, error fields cleared), then the platform event.

        `publish=False` acts out an event that never arrives (a Flow that failed after the
        update, a purge, a lost replay id): the order sits Activating with no event."""
        order = self._order(order_id)
        self.store.update("Order", order["Id"], {"Status": APPROVED, **ACTIVATING})
        if not publish:
            return None
        return self.publish_event({"OrderId__c": order["Id"]})

    def retry(self, order_id: str) -> dict[str, Any]:
        """The "Provision / Retry" button of the runbook."""
        with self.store.lock:
            order = self._order(order_id)
            if order["Activation_Status__c"] == "Activating":
                return {"result": "Already in progress"}
            self.store.update("Order", order["Id"], ACTIVATING)
        return {"result": "published", "event": self.publish_event({"OrderId__c": order["Id"]})}

    def _order(self, order_id: Any) -> dict[str, Any]:
        order = self.store.get("Order", self.refs.get(order_id, order_id))
        if order is None:
            raise KeyError(f"no Order {order_id!r}")
        return order

    # --- admin --------------------------------------------------------------------------------

    def admin(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """The `sf/<op>` operations of the admin API (docs/design.md)."""
        ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "approve": lambda b: {"event": self.approve(b["order_id"], b.get("publish", True))},
            "retry": lambda b: self.retry(b["order_id"]),
            "publish": lambda b: {
                "event": self.publish_event(b.get("payload") or {}, b.get("event_uuid"))
            },
            "order": self._admin_order,
            "orders": lambda b: {"orders": self.store.records("Order")},
            "events": lambda b: {"events": self.bus.events(CHANNEL)},
            "patches": lambda b: {"patches": self._patches()},
            "revoke_tokens": self._admin_revoke_tokens,
            "set_app": self._admin_set_app,
            "set_field_access": self._admin_set_field_access,
            "set_query_batch": self._admin_set_query_batch,
            "set_retention_floor": self._admin_set_retention_floor,
            # A schema change of the platform event, as seen by Pub/Sub subscribers.
            "add_event_field": lambda b: {
                "schema_id": self.pubsub.add_field(CHANNEL, str(b["field"]))
            },
            "counters": lambda b: self.counters(),
        }
        if op not in ops:
            raise LookupError(f"unknown operation sf/{op}")
        return ops[op](body or {})

    def _patches(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.patches)

    def _admin_order(self, body: dict[str, Any]) -> dict[str, Any]:
        order = self._order(body["order_id"])
        items = [i for i in self.store.records("OrderItem") if i["OrderId"] == order["Id"]]
        return {"order": dict(order), "items": items}

    def _admin_revoke_tokens(self, body: dict[str, Any]) -> dict[str, Any]:
        self.tokens.revoke_all()
        return {"revoked": True}

    def _admin_set_app(self, body: dict[str, Any]) -> dict[str, Any]:
        self.oauth.approved = bool(body.get("approved", True))
        return {"approved": self.oauth.approved}

    def _admin_set_field_access(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("object", "Order")
        found = sobject(name)
        field = found.field(body["field"]) if found else None
        if found is None or field is None:
            raise KeyError(f"no field {body['field']!r} on {name}")
        self.field_access[(found.name, field.name)] = bool(body.get("updateable", True))
        updateable = self.may_edit(field, found.name)
        return {"object": found.name, "field": field.name, "updateable": updateable}

    def _admin_set_query_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        size = int(body.get("size", QUERY_BATCH))
        if not 0 < size <= QUERY_BATCH:
            raise ValueError(f"size must be 1 to {QUERY_BATCH}")
        self.query_batch = size
        return {"size": size}

    def _admin_set_retention_floor(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bus.set_retention_floor(CHANNEL, int(body["replay_id"]))
        return {"replay_id": int(body["replay_id"])}

    def counters(self) -> dict[str, Any]:
        cometd = self.cometd.counters()
        with self._lock:
            api_calls = dict(self.api_calls)
        return {
            "logins": self.oauth.logins,
            "login_refusals": self.oauth.refusals,
            "api_calls": api_calls,
            "cometd": cometd,
            "pubsub": self.pubsub.counters(),
            "delivered": cometd.get("delivered", 0),
            "published": len(self.bus.events(CHANNEL)),
        }
