"""`SandboxAdmin`: the admin API from Python, one method per operation (tests, demo, bench)."""

from __future__ import annotations

from typing import Any

import requests

DEFAULT_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds; admin calls answer at once


class SandboxAdminError(Exception):
    def __init__(self, op: str, status: int, error: str) -> None:
        super().__init__(f"admin {op}: HTTP {status}: {error}")
        self.op = op
        self.status = status
        self.error = error


def _op(op: str, key: str = "") -> Any:
    """A method that runs `op` with an empty body and returns the reply (or its `key`)."""

    def method(self: SandboxAdmin) -> Any:
        reply = self.call(op)
        return reply[key] if key else reply

    return method


class SandboxAdmin:
    def __init__(self, admin_url: str, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def call(self, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = self.session.post(
            f"{self.admin_url}/admin/{op}", json=body or {}, timeout=self.timeout
        )
        try:
            data = reply.json()
        except ValueError:
            data = {"error": reply.text[:200]}
        if reply.status_code >= 400:
            raise SandboxAdminError(op, reply.status_code, str(data.get("error", data)))
        return data

    def close(self) -> None:
        self.session.close()

    # Whole sandbox.

    def health(self) -> bool:
        return bool(self.call("health").get("ok"))

    def load(self, document: dict[str, Any]) -> dict[str, Any]:
        """Load a fixture document; `{"refs": {ref: id}, "pricebook_id": ...}`."""
        return self.call("load", document)

    reset = _op("reset")
    counters = _op("counters")

    # Salesforce.

    def approve(self, order_id: str, *, publish: bool = True) -> dict[str, Any]:
        """The approval Flow: Activating, then the platform event (returned). publish=False:
        Activating only, the event never published (returns {})."""
        body = {"order_id": order_id, "publish": publish}
        return self.call("sf/approve", body)["event"] or {}

    def retry(self, order_id: str) -> dict[str, Any]:
        """The runbook's Provision / Retry: result "Already in progress" or "published"."""
        return self.call("sf/retry", {"order_id": order_id})

    def publish(self, payload: dict[str, Any], event_uuid: str | None = None) -> dict[str, Any]:
        """Publish an event; `event_uuid` forces its EventUuid (malformed-event tests)."""
        body: dict[str, Any] = {"payload": payload}
        if event_uuid is not None:
            body["event_uuid"] = event_uuid
        return self.call("sf/publish", body)["event"]

    def order(self, order_id: str) -> dict[str, Any]:
        """The Order record as stored."""
        return self.call("sf/order", {"order_id": order_id})["order"]

    def order_items(self, order_id: str) -> list[dict[str, Any]]:
        return self.call("sf/order", {"order_id": order_id})["items"]

    orders = _op("sf/orders", "orders")
    events = _op("sf/events", "events")
    patches = _op("sf/patches", "patches")
    revoke_tokens = _op("sf/revoke_tokens")

    def set_app(self, *, approved: bool) -> None:
        self.call("sf/set_app", {"approved": approved})

    def set_field_access(self, field: str, *, updateable: bool, sobject: str = "Order") -> None:
        self.call(
            "sf/set_field_access", {"field": field, "updateable": updateable, "object": sobject}
        )

    def set_query_batch(self, size: int) -> None:
        """Query results (and child sets) longer than `size` come in pages (nextRecordsUrl)."""
        self.call("sf/set_query_batch", {"size": size})

    def set_retention_floor(self, replay_id: int) -> None:
        self.call("sf/set_retention_floor", {"replay_id": replay_id})

    sf_counters = _op("sf/counters")

    def add_event_field(self, field: str) -> str:
        """A new custom field on the platform event: a new Avro schema id for Pub/Sub."""
        return self.call("sf/add_event_field", {"field": field})["schema_id"]

    # WHMCS.

    whmcs_orders = _op("whmcs/orders")
    whmcs_counters = _op("whmcs/counters")
    whmcs_substitutions = _op("whmcs/substitutions")

    def whmcs_requests(self, action: str | None = None) -> dict[str, Any]:
        return self.call("whmcs/requests", {"action": action} if action else {})

    def set_role(self, allowed_actions: list[str] | None) -> dict[str, Any]:
        return self.call("whmcs/set_role", {"allowed_actions": allowed_actions})

    def set_client(self, **fields: Any) -> dict[str, Any]:
        return self.call("whmcs/set_client", fields)

    # Faults.

    def add_fault(self, target: str, kind: str, count: int = 1, **params: Any) -> dict[str, Any]:
        """The next `count` calls to `target` do `kind` (count -1: every call)."""
        return self.call(
            "faults/add", {"target": target, "kind": kind, "count": count, "params": params}
        )

    def set_latency(self, target: str, seconds: float) -> None:
        self.call("faults/latency", {"target": target, "seconds": seconds})

    clear_faults = _op("faults/clear")
    pending_faults = _op("faults/pending", "faults")
    fault_history = _op("faults/history", "history")
