"""A Bayeux (CometD long-polling) client on requests: handshake, subscribe, connect, disconnect.

It speaks the protocol and nothing else: it knows no replay store, queue or business rule.
One instance is one Bayeux session over one `requests.Session` (its cookie jar carries
BAYEUX_BROWSER); a new session gets a new instance. Transport failures are raised as
`shared.errors` integration errors; Bayeux-level refusals come back as `Reply` values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import requests

from shared.config import SalesforceSettings
from shared.errors import BadResponse, ConnectionFailed, HttpStatusError, UpstreamTimeout
from shared.sfauth import Token

SYSTEM = "salesforce"
DEFAULT_ADVISED_TIMEOUT = 110.0  # what Salesforce advises; used until the server says otherwise
MAX_ADVISED_TIMEOUT = 600.0  # seconds; more is not advice a long-poll can follow
MAX_INTERVAL = 30.0  # seconds; Salesforce advises 0 (2 with several clients)


@dataclass(frozen=True)
class Reply:
    """The server's answer to one meta message."""

    channel: str
    successful: bool
    error: str = ""
    advice: dict[str, Any] = field(default_factory=dict)
    ext: dict[str, Any] = field(default_factory=dict)
    client_id: str | None = None

    @classmethod
    def parse(cls, message: dict[str, Any]) -> Reply:
        advice = message.get("advice")
        ext = message.get("ext")
        return cls(
            channel=str(message.get("channel", "")),
            successful=message.get("successful") is True,
            error=str(message.get("error") or ""),
            advice=advice if isinstance(advice, dict) else {},
            ext=ext if isinstance(ext, dict) else {},
            client_id=message.get("clientId"),
        )

    @property
    def code(self) -> int | None:
        """The three-digit code in front of `error` ("403::Unknown client" -> 403)."""
        match = re.match(r"\s*(\d{3})", self.error)
        return int(match.group(1)) if match else None

    @property
    def failure_reason(self) -> str:
        """Salesforce's `ext.sfdc.failureReason` (e.g. "401::Authentication invalid")."""
        sfdc = self.ext.get("sfdc")
        return str(sfdc.get("failureReason", "")) if isinstance(sfdc, dict) else ""

    @property
    def reconnect(self) -> str | None:
        value = self.advice.get("reconnect")
        return str(value) if value is not None else None


@dataclass(frozen=True)
class Delivery:
    """What one /meta/connect brought back."""

    events: list[dict[str, Any]]  # data messages: {"channel", "data"}
    reply: Reply
    server_disconnected: bool = False  # a bare {"channel": "/meta/disconnect"} came with it


class BayeuxClient:
    def __init__(
        self,
        url: str,
        access_token: str,
        session: requests.Session,
        *,
        connect_timeout: float,
        request_timeout: float,
    ) -> None:
        self.url = url
        self.session = session
        self.session.headers["Authorization"] = f"Bearer {access_token}"
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout  # handshake, subscribe, disconnect
        self.client_id: str | None = None
        self.advised_timeout = DEFAULT_ADVISED_TIMEOUT
        self.interval = 0.0
        self._next_id = 0

    @classmethod
    def for_org(
        cls, token: Token, sf: SalesforceSettings, session: requests.Session
    ) -> BayeuxClient:
        """The org's CometD endpoint of the token's instance, at the configured API version."""
        url = f"{token.instance_url.rstrip('/')}/cometd/{sf.api_version}"
        return cls(
            url,
            token.access_token,
            session,
            connect_timeout=sf.connect_timeout,
            request_timeout=sf.timeout,
        )

    @property
    def poll_timeout(self) -> float:
        """Read timeout of a long-poll: above the advised hold, with room for a slow network."""
        return self.advised_timeout + max(2.0, 0.2 * self.advised_timeout)

    def handshake(self) -> Reply:
        reply, _ = self._exchange(
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "minimumVersion": "1.0",
                "supportedConnectionTypes": ["long-polling"],
                "ext": {"replay": True},
            },
            self.request_timeout,
        )
        if reply.successful:
            self.client_id = reply.client_id
        return reply

    def subscribe(self, channel: str, replay_id: int) -> Reply:
        reply, _ = self._exchange(
            {
                "channel": "/meta/subscribe",
                "clientId": self.client_id,
                "subscription": channel,
                "ext": {"replay": {channel: replay_id}},
            },
            self.request_timeout,
        )
        return reply

    def connect(self) -> Delivery:
        reply, others = self._exchange(
            {
                "channel": "/meta/connect",
                "clientId": self.client_id,
                "connectionType": "long-polling",
            },
            self.poll_timeout,
        )
        self._follow(reply.advice)
        events = [
            m for m in others if "data" in m and not str(m.get("channel")).startswith("/meta/")
        ]
        dropped = any(m.get("channel") == "/meta/disconnect" and "id" not in m for m in others)
        return Delivery(events, reply, dropped)

    def disconnect(self, timeout: float) -> None:
        """Best effort: tell the server we are leaving, so it frees the session at once."""
        if self.client_id is None:
            return
        message = {"channel": "/meta/disconnect", "clientId": self.client_id}
        try:
            self._exchange(message, timeout)
        except (ConnectionFailed, UpstreamTimeout, BadResponse, HttpStatusError):
            pass
        self.client_id = None

    def close(self) -> None:
        self.session.close()

    def _follow(self, advice: dict[str, Any]) -> None:
        """Remember the server's timeout and interval (milliseconds on the wire), within bounds:
        an interval of years would park the loop where the watchdog cannot see it, and an
        infinite timeout cannot be a socket timeout."""
        timeout, interval = _seconds(advice.get("timeout")), _seconds(advice.get("interval"))
        if timeout is not None and timeout > 0:
            self.advised_timeout = min(timeout, MAX_ADVISED_TIMEOUT)
        if interval is not None and interval >= 0:
            self.interval = min(interval, MAX_INTERVAL)

    def _exchange(
        self, message: dict[str, Any], read_timeout: float
    ) -> tuple[Reply, list[dict[str, Any]]]:
        """POST one message (as a one-element array); its reply and whatever came with it."""
        self._next_id += 1
        message["id"] = str(self._next_id)
        messages = self._post([message], read_timeout)
        ours = [m for m in messages if m.get("channel") == message["channel"] and "successful" in m]
        mine = next((m for m in ours if str(m.get("id")) == message["id"]), None)
        if mine is None:
            raise BadResponse(
                f"CometD answered without a reply to {message['channel']}", system=SYSTEM
            )
        return Reply.parse(mine), [m for m in messages if m is not mine]

    def _post(self, payload: list[dict[str, Any]], read_timeout: float) -> list[dict[str, Any]]:
        channel = payload[0]["channel"]
        try:
            response = self.session.post(
                self.url, json=payload, timeout=(self.connect_timeout, read_timeout)
            )
        except requests.Timeout as exc:
            raise UpstreamTimeout(f"CometD {channel} timed out", system=SYSTEM) from exc
        except requests.RequestException as exc:
            raise ConnectionFailed(
                f"CometD {channel} failed: {type(exc).__name__}", system=SYSTEM
            ) from exc
        if response.status_code != 200:
            raise HttpStatusError(
                f"CometD {channel} answered HTTP {response.status_code}",
                system=SYSTEM,
                status=response.status_code,
            )
        try:
            body = response.json()
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            raise BadResponse(f"CometD {channel} answered non-JSON", system=SYSTEM) from exc
        if not isinstance(body, list) or not all(isinstance(m, dict) for m in body):
            raise BadResponse(f"CometD {channel} answered a non-array", system=SYSTEM)
        return body


def _seconds(milliseconds: Any) -> float | None:
    """An advice number in seconds; None for anything that is not a finite number."""
    if isinstance(milliseconds, bool) or not isinstance(milliseconds, int | float):
        return None
    return milliseconds / 1000.0 if math.isfinite(milliseconds) else None
