"""The sandbox's CometD (Bayeux long-polling) endpoint, as Salesforce's Streaming API behaves.

`POST /cometd/<version>` with a JSON array of messages: handshake (BAYEUX_BROWSER cookie,
`ext.replay`), connect (first reply at once with advice, later ones held up to `timeout`),
subscribe with the replay extension (-1, -2, N meaning "after N", the exact invalid-replayId
text), unsubscribe and disconnect. Clients that do not reconnect within `reconnect_timeout`
are forgotten (`403::Unknown client`); a revoked token gets 401 on connect. Faults come from
the shared FaultBook on the targets `cometd.handshake`, `cometd.subscribe`, `cometd.connect`:
`unknown_client`, `auth_invalid`, `invalid_replay` (subscribe), `lost_batch` and `duplicate`
(connect), `error` (`{error, reconnect, interval, failure_reason}`: any other refusal), and the
transport kinds `hang`, `reset`, `status`.
"""

from __future__ import annotations

import json
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any
from urllib.parse import parse_qs

from sandbox.faults import Fault, FaultBook
from sandbox.http_server import Drop, Hang, Request, Response
from sandbox.salesforce.eventbus import EventBus

MIN_VERSION = 37.0
MAX_BODY = 32_768
BROWSER_COOKIE = "BAYEUX_BROWSER"
MULTIPLE_CLIENTS_INTERVAL_MS = 2000

UNKNOWN_CLIENT = "403::Unknown client"
AUTH_INVALID = "401::Authentication invalid"
AUTH_REQUIRED = "401::Request requires authentication"
HANDSHAKE_DENIED = "403::Handshake denied"
INVALID_REPLAY = (
    "400::The replayId {{{}}} you provided was invalid.  Please provide a valid ID, "
    "-2 to replay all events, or -1 to replay only new events."
)
REPLAY_NOT_IN_MAP = (
    "400::The replayId for channel {{{}}} wasn't found using the provided replay ID map "
    "{{{}}}. Ensure that the channel name you provided in the replay map is valid and "
    "matches the channel name used for subscribing."
)
NO_SUCH_CHANNEL = "400::The channel you requested to subscribe to doesn't exist {{{}}}"
NO_LEADING_SLASH = "400::Channel subscriptions must start with a leading '/'"
NO_COOKIE = "400::Client {} has established a session, but no " + BROWSER_COOKIE + " cookie present"
# The advice's `reconnect` with a refusal: a new handshake helps an unknown client, nothing helps
# a bad token.
REFUSAL_ADVICE = {UNKNOWN_CLIENT: "handshake", AUTH_INVALID: "none", AUTH_REQUIRED: "none"}
FAULT_REFUSALS = {"unknown_client": UNKNOWN_CLIENT, "auth_invalid": AUTH_INVALID}

_ID_ALPHABET = string.ascii_lowercase + string.digits
Message = dict[str, Any]  # one Bayeux message, in or out


def _new_id(length: int) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _java_map(mapping: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in mapping.items()) + "}"


def _version_ok(path: str) -> bool:
    parts = path.strip("/").split("/")
    if len(parts) != 2 or parts[0] != "cometd":
        return False
    try:
        return float(parts[1]) >= MIN_VERSION and "." in parts[1]
    except ValueError:
        return False


def bearer_token(request: Request) -> str | None:
    """The access token of an `Authorization: Bearer|OAuth <token>` header."""
    scheme, _, token = request.header("Authorization").strip().partition(" ")
    if scheme.lower() in ("bearer", "oauth") and token.strip():
        return token.strip()
    return None


@dataclass
class _Client:
    id: str
    browser: str
    cursors: dict[str, int] = field(default_factory=dict)  # channel -> last replay id sent
    connected: bool = False  # has had its first (immediate) connect
    last_seen: float = 0.0
    holding: int = 0  # connects currently held open
    generation: int = 0  # a newer connect releases an older held one
    lose_next_batch: bool = False
    last_batch: list[Message] = field(default_factory=list)


@dataclass
class _Exchange:
    """One HTTP request being answered: replies in order, plus the connect to hold, if any."""

    request: Request
    token: str | None
    replies: list[Message] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    connect: tuple[_Client, Message, Fault | None] | None = None
    hold: bool = False


class _StatusReply(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(eq=False)
class CometdServer:
    bus: EventBus
    faults: FaultBook
    is_token_valid: Callable[[str], bool]
    _: KW_ONLY
    timeout: float = 110.0
    reconnect_timeout: float = 40.0
    max_batch: int = 100

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._clients: dict[str, _Client] = {}
            self._last_batch: list[Message] = []
            self._counts = dict.fromkeys(
                ("handshake", "connect", "subscribe", "unsubscribe", "disconnect", "delivered"), 0
            )
        self.bus.wake()

    def counters(self) -> dict[str, int]:
        with self._lock:
            held = sum(c.holding for c in self._clients.values())
            return {**self._counts, "clients": len(self._clients), "holding": held}

    def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return Response.text("Method Not Allowed", 405)
        if not _version_ok(request.path):
            return Response.json(
                [{"successful": False, "error": "400::Unsupported API version: use 37.0 or later"}],
                400,
            )
        if len(request.body) > MAX_BODY:
            return Response.text("Maximum Request Size Exceeded", 413)
        messages = self._messages(request)
        if messages is None:
            return Response.json(
                [{"successful": False, "error": "400::Request body must be a JSON array"}], 400
            )
        try:
            return self._exchange(request, messages)
        except _StatusReply as status:
            return Response.text(
                f"<html><body>HTTP {status.status}</body></html>", status.status, "text/html"
            )

    # Request plumbing.

    def _messages(self, request: Request) -> list[Message] | None:
        try:
            if "x-www-form-urlencoded" in request.header("Content-Type"):
                body = json.loads(parse_qs(request.body.decode())["message"][0])
            else:
                body = request.json()
        except (ValueError, KeyError, UnicodeDecodeError):
            return None
        if not isinstance(body, list) or not all(isinstance(m, dict) for m in body):
            return None  # Salesforce refuses a bare object since Winter '27
        return body

    def _exchange(self, request: Request, messages: list[Message]) -> Response:
        self._forget_idle()
        ex = _Exchange(request, bearer_token(request))
        for message in messages:
            ex.replies.append(self._dispatch(ex, message))
        events = self._finish_connect(ex) if ex.connect else []
        return Response.json(events + ex.replies, headers=ex.headers)

    def _dispatch(self, ex: _Exchange, message: Message) -> Message:
        channel = str(message.get("channel", ""))
        handler = {
            "/meta/handshake": self._handshake,
            "/meta/connect": self._connect,
            "/meta/subscribe": self._subscribe,
            "/meta/unsubscribe": self._unsubscribe,
            "/meta/disconnect": self._disconnect,
        }.get(channel)
        if handler is None:
            return self._reply(message, error="403::Publish denied or unknown meta channel")
        fault = self._fault(channel)
        return handler(ex, message, fault)

    def _fault(self, channel: str) -> Fault | None:
        fault = self.faults.on_call("cometd." + channel.rsplit("/", 1)[1])
        if fault is None:
            return None
        if fault.kind == "hang":
            raise Hang(float(fault.params.get("seconds", max(3 * self.timeout, 5.0))))
        if fault.kind == "reset":
            raise Drop()
        if fault.kind == "status":
            raise _StatusReply(int(fault.params.get("status", 503)))
        return fault

    def _reply(self, message: Message, *, error: str | None = None, **fields: Any) -> Message:
        reply: Message = {"channel": message.get("channel")}
        if "id" in message:
            reply["id"] = str(message["id"])
        if message.get("clientId"):
            reply["clientId"] = message["clientId"]
        reply.update(fields)
        reply["successful"] = error is None
        if error is not None:
            reply["error"] = error
        return reply

    def _count(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counts[name] += by

    # Client registry.

    def _client(self, ex: _Exchange, message: Message) -> tuple[_Client | None, str | None]:
        """The session a message names, or the error that refuses it."""
        with self._lock:
            client = self._clients.get(str(message.get("clientId", "")))
            if client is not None:
                client.last_seen = time.monotonic()
        if client is None:
            return None, UNKNOWN_CLIENT
        if BROWSER_COOKIE not in ex.request.cookies:
            return None, NO_COOKIE.format(client.id)
        if ex.token is None:
            return None, AUTH_REQUIRED
        if not self.is_token_valid(ex.token):
            self._forget(client.id)
            return None, AUTH_INVALID
        return client, None

    def _forget(self, client_id: str) -> None:
        with self._lock:
            self._clients.pop(client_id, None)
        self.bus.wake()

    def _forget_idle(self) -> None:
        """Drop clients that did not come back within the reconnect timeout (Salesforce: 40 s)."""
        cutoff = time.monotonic() - self.reconnect_timeout
        with self._lock:
            idle = [c.id for c in self._clients.values() if c.holding == 0 and c.last_seen < cutoff]
            for client_id in idle:
                del self._clients[client_id]

    def _refusal(self, message: Message, error: str) -> Message:
        reconnect = REFUSAL_ADVICE.get(error)
        if reconnect is None:
            return self._reply(message, error=error)
        return self._reply(message, error=error, advice={"reconnect": reconnect, "interval": 0})

    def _generic_fault(self, message: Message, fault: Fault | None) -> Message | None:
        if fault is None:
            return None
        if fault.kind in FAULT_REFUSALS:
            self._forget(str(message.get("clientId", "")))
            return self._refusal(message, FAULT_REFUSALS[fault.kind])
        if fault.kind == "error":  # any other refusal, e.g. a transient SERVER_UNAVAILABLE
            params = fault.params
            reply = self._reply(
                message,
                error=str(params.get("error", "500::Internal server error")),
                advice={
                    "reconnect": params.get("reconnect", "retry"),
                    "interval": int(params.get("interval", 0)),
                },
            )
            if params.get("failure_reason"):
                reply["ext"] = {"sfdc": {"failureReason": params["failure_reason"]}}
            return reply
        return None

    # Meta channels.

    def _handshake(self, ex: _Exchange, message: Message, fault: Fault | None) -> Message:
        self._count("handshake")
        if fault is not None and fault.kind == "unknown_client":
            return self._refusal(message, UNKNOWN_CLIENT)
        if ex.token is None:
            return self._refusal(message, AUTH_REQUIRED)
        refused = fault is not None and fault.kind == "auth_invalid"
        if refused or not self.is_token_valid(ex.token):
            return self._reply(
                message,
                error=HANDSHAKE_DENIED,
                ext={"sfdc": {"failureReason": AUTH_INVALID}, "replay": True},
                advice={"reconnect": "none"},
            )
        types = message.get("supportedConnectionTypes") or []
        if "long-polling" not in types:
            return self._reply(message, error=f"400::Invalid connection type {types}")
        client = _Client(_new_id(26), self._browser(ex), last_seen=time.monotonic())
        with self._lock:
            self._clients[client.id] = client
        return self._reply(
            message,
            ext={"replay": True, "payload.format": True},
            minimumVersion="1.0",
            clientId=client.id,
            supportedConnectionTypes=["long-polling"],
            version="1.0",
            reestablish=False,
        )

    def _browser(self, ex: _Exchange) -> str:
        existing = ex.request.cookies.get(BROWSER_COOKIE)
        if existing:
            return existing
        browser = _new_id(24)
        ex.headers.append(("Set-Cookie", f"{BROWSER_COOKIE}={browser}; Path=/; HttpOnly; Secure"))
        return browser

    def _connect(self, ex: _Exchange, message: Message, fault: Fault | None) -> Message:
        self._count("connect")
        refused = self._generic_fault(message, fault)
        if refused is not None:
            if fault is not None and fault.params.get("reconnect") == "none":
                refused["advice"]["reconnect"] = "none"
                ex.replies.append({"channel": "/meta/disconnect"})
            return refused
        client, error = self._client(ex, message)
        if client is None:
            return self._refusal(message, error or UNKNOWN_CLIENT)
        connection_type = message.get("connectionType")
        if connection_type != "long-polling":
            return self._reply(message, error=f"400::Invalid connection type {connection_type}")
        reply = self._reply(message)
        with self._lock:
            first = not client.connected
            client.connected = True
            client.generation += 1
            crowded = any(
                c.browser == client.browser and c.id != client.id and c.holding
                for c in self._clients.values()
            )
        advice = {"interval": 0, "timeout": int(self.timeout * 1000), "reconnect": "retry"}
        if crowded:
            advice.update({"interval": MULTIPLE_CLIENTS_INTERVAL_MS, "multiple-clients": True})
        if first or crowded:
            reply["advice"] = advice
        ex.connect = (client, reply, fault)
        ex.hold = not (first or crowded)
        return reply

    def _subscribe(self, ex: _Exchange, message: Message, fault: Fault | None) -> Message:
        self._count("subscribe")
        channel = message.get("subscription")
        refused = self._generic_fault(message, fault)
        if refused is not None:
            refused["subscription"] = channel
            return refused
        client, error = self._client(ex, message)
        if client is None:
            return {**self._refusal(message, error or UNKNOWN_CLIENT), "subscription": channel}
        error, cursor = self._start_cursor(message, channel, fault)
        if error is None:
            with self._lock:
                client.cursors[str(channel)] = cursor
            self.bus.wake()
        return self._reply(message, error=error, subscription=channel)

    def _start_cursor(
        self, message: Message, channel: Any, fault: Fault | None
    ) -> tuple[str | None, int]:
        """Where a subscription starts: (error, replay id after which events are delivered)."""
        if not isinstance(channel, str) or not channel.startswith("/"):
            return NO_LEADING_SLASH, 0
        if not self.bus.has_channel(channel):
            return NO_SUCH_CHANNEL.format(channel), 0
        replay_map = (message.get("ext") or {}).get("replay")
        if not isinstance(replay_map, dict):
            return None, self.bus.tip(channel)  # no replay extension: new events only
        if channel not in replay_map:
            return REPLAY_NOT_IN_MAP.format(channel, _java_map(replay_map)), 0
        requested = replay_map[channel]
        if fault is not None and fault.kind == "invalid_replay":
            return INVALID_REPLAY.format(requested), 0
        if requested == -1:
            return None, self.bus.tip(channel)
        if requested == -2:
            return None, self.bus.floor(channel)
        valid = isinstance(requested, int) and not isinstance(requested, bool)
        if valid and self.bus.is_retained(channel, requested):
            return None, requested
        return INVALID_REPLAY.format(requested), 0

    def _unsubscribe(self, ex: _Exchange, message: Message, fault: Fault | None) -> Message:
        self._count("unsubscribe")
        client, error = self._client(ex, message)
        channel = message.get("subscription")
        if client is None:
            return {**self._refusal(message, error or UNKNOWN_CLIENT), "subscription": channel}
        with self._lock:
            client.cursors.pop(str(channel), None)
        return self._reply(message, subscription=channel)

    def _disconnect(self, ex: _Exchange, message: Message, fault: Fault | None) -> Message:
        self._count("disconnect")
        client_id = str(message.get("clientId", ""))
        with self._lock:
            known = client_id in self._clients
        if not known:
            return self._refusal(message, UNKNOWN_CLIENT)
        self._forget(client_id)
        return self._reply(message)

    # Delivery.

    def _finish_connect(self, ex: _Exchange) -> list[Message]:
        assert ex.connect is not None
        client, reply, fault = ex.connect
        kind = fault.kind if fault is not None else None
        if kind == "lost_batch":
            client.lose_next_batch = True
        replayed = self._last_delivered(client) if kind == "duplicate" else []
        with self._lock:
            client.holding += 1
        try:
            events = self._wait_for_events(client, hold=ex.hold and not replayed)
        finally:
            with self._lock:
                client.holding -= 1
                client.last_seen = time.monotonic()
                gone = client.id not in self._clients
        if gone:
            reply.update(self._refusal(reply, UNKNOWN_CLIENT))
            return []
        if events and client.lose_next_batch:
            client.lose_next_batch = False
            raise Drop()  # the events count as delivered; the client never sees them
        return replayed + events

    def _wait_for_events(self, client: _Client, *, hold: bool) -> list[Message]:
        deadline = time.monotonic() + (self.timeout if hold else 0.0)
        generation = client.generation
        version = self.bus.version()
        while True:
            events = self._deliver(client)
            remaining = deadline - time.monotonic()
            with self._lock:
                released = client.generation != generation or client.id not in self._clients
            if events or released or remaining <= 0:
                return events
            version = self.bus.wait_for_change(version, remaining)

    def _deliver(self, client: _Client) -> list[Message]:
        """Take the client's next batch: its cursors advance, the events count as delivered."""
        batch: list[Message] = []
        with self._lock:
            for channel, cursor in client.cursors.items():
                room = self.max_batch - len(batch)
                if room <= 0:
                    break
                for event in self.bus.after(channel, cursor, room):
                    batch.append({"data": event, "channel": channel})
                    client.cursors[channel] = event["event"]["replayId"]
            if batch:
                client.last_batch = batch
                self._last_batch = batch
                self._counts["delivered"] += len(batch)
        return batch

    def _last_delivered(self, client: _Client) -> list[Message]:
        """What the `duplicate` fault sends again: this client's last batch, else anyone's."""
        with self._lock:
            batch = client.last_batch or [
                m for m in self._last_batch if m["channel"] in client.cursors
            ]
            self._counts["delivered"] += len(batch)
            return [dict(m) for m in batch]
