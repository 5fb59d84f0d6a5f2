"""Scripted faults and latency for the emulators: "the next N calls to X do Y".

Targets are dotted names such as `sf.token`, `sf.query`, `sf.patch`, `cometd.connect`,
`whmcs.AddOrder`; a fault on `whmcs.*` or `sf.*` matches every target of that system.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fault:
    target: str
    kind: str
    remaining: int = 1
    params: dict[str, Any] = field(default_factory=dict)


class FaultBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._latency: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []

    def add(self, target: str, kind: str, count: int = 1, **params: Any) -> Fault:
        fault = Fault(target, kind, count, params)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, target: str) -> Fault | None:
        """The first pending fault for `target` (or its system's wildcard), used up by one."""
        system = target.split(".", 1)[0] + ".*"
        with self._lock:
            for fault in self._faults:
                if fault.target in (target, system) and fault.remaining != 0:
                    fault.remaining -= 1  # a negative count never runs out
                    self.history.append({"target": target, "kind": fault.kind, **fault.params})
                    return fault
        return None

    def on_call(self, *targets: str) -> Fault | None:
        """What a call meets: the first latency set among `targets`, slept, then the first
        pending fault among them (later targets are fallbacks, such as `sf.rest`)."""
        seconds = next((s for t in targets if (s := self.latency(t)) > 0), 0.0)
        if seconds > 0:
            time.sleep(seconds)
        return next((f for t in targets if (f := self.take(t)) is not None), None)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._latency.clear()

    def set_latency(self, target: str, seconds: float) -> None:
        with self._lock:
            self._latency[target] = seconds

    def latency(self, target: str) -> float:
        system = target.split(".", 1)[0] + ".*"
        with self._lock:
            return self._latency.get(target, self._latency.get(system, 0.0))

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"target": f.target, "kind": f.kind, "remaining": f.remaining, **f.params}
                for f in self._faults
                if f.remaining != 0
            ]
