"""The sandbox's admin API: plain HTTP on loopback, `POST /admin/<op>` with a JSON body.

Operations (docs/design.md): `load`, `reset`, `counters`, `faults/*`, and `sf/*` / `whmcs/*`,
which go to the emulators' own `admin(op, body)`. `GET /admin/health` answers while it runs.
Replies are JSON; a bad request is 400 `{"error": ...}`, an unknown operation 404.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from sandbox.emulators import Emulators
from sandbox.http_server import Request, Response

log = logging.getLogger(__name__)
PREFIX = "/admin/"


class AdminApp:
    def __init__(self, sandbox: Emulators) -> None:
        self.sandbox = sandbox
        self.ops: dict[str, Callable[[Any], Any]] = {
            "health": lambda body: {"ok": True},
            "load": self.sandbox.load,
            "reset": self._reset,
            "counters": self._counters,
            "faults/add": self._add_fault,
            "faults/latency": self._latency,
            "faults/clear": self._clear_faults,
            "faults/pending": lambda body: {"faults": self.sandbox.faults.pending()},
            "faults/history": lambda body: {"history": list(self.sandbox.faults.history)},
        }

    def __call__(self, request: Request) -> Response:
        op = request.path[len(PREFIX) :] if request.path.startswith(PREFIX) else ""
        if request.method == "GET" and op == "health":
            return Response.json({"ok": True})
        if request.method != "POST" or not op:
            return Response.json({"error": "use POST /admin/<op>"}, 404)
        try:
            body = json.loads(request.body) if request.body.strip() else {}
        except ValueError:
            return Response.json({"error": "the body is not JSON"}, 400)
        return self.run(op, body)

    def run(self, op: str, body: Any) -> Response:
        handler = self._handler(op)
        if handler is None:
            return Response.json({"error": f"unknown operation {op}"}, 404)
        try:
            result = handler(body)
        except (LookupError, ValueError, TypeError) as exc:
            return Response.json({"error": f"{type(exc).__name__}: {exc}"}, 400)
        except Exception as exc:  # the admin API reports, it never takes the sandbox down
            log.exception("admin operation %s failed", op)
            return Response.json({"error": f"{type(exc).__name__}: {exc}"}, 500)
        return Response.json(result if result is not None else {})

    def _handler(self, op: str) -> Callable[[Any], Any] | None:
        system, _, name = op.partition("/")
        if system == "sf" and name:
            return lambda body: self.sandbox.salesforce.admin(name, body)
        if system == "whmcs" and name:
            return lambda body: self.sandbox.whmcs.admin(name, body)
        return self.ops.get(op)

    def _reset(self, body: Any) -> dict[str, Any]:
        self.sandbox.reset()
        return {"reset": True}

    def _counters(self, body: Any) -> dict[str, Any]:
        return {
            "salesforce": self.sandbox.salesforce.counters(),
            "whmcs": self.sandbox.whmcs.admin("counters", {}),
        }

    def _add_fault(self, body: dict[str, Any]) -> dict[str, Any]:
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise TypeError("params must be a JSON object")
        fault = self.sandbox.faults.add(
            str(body["target"]), str(body["kind"]), int(body.get("count", 1)), **params
        )
        return {"target": fault.target, "kind": fault.kind, "count": fault.remaining, **params}

    def _latency(self, body: dict[str, Any]) -> dict[str, Any]:
        self.sandbox.faults.set_latency(str(body["target"]), float(body["seconds"]))
        return {"target": body["target"], "seconds": float(body["seconds"])}

    def _clear_faults(self, body: Any) -> dict[str, Any]:
        self.sandbox.faults.clear()
        return {"cleared": True}
