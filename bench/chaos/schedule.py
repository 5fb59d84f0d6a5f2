"""The chaos run's faults: what kinds there are, and a seeded schedule of when each strikes.

`plan(seed, ...)` is pure: the same seed gives the same schedule, so a failing run can be
replayed with `python -m bench.chaos --seed N`. (Processes still race, so a replay reproduces the
faults and their moments, not every interleaving.)

No kind is an `sf.query` (or `sf.*`) emulator fault: the reconciler's sweep and the reaper's
status reads query Salesforce too, so such a fault could be taken by them instead of a job and
the table would count a fault "taken" that hit no order. Salesforce's side is struck by the
token revocation and the refused outcome PATCHes instead, whose hits are read from what the
services logged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Kind:
    key: str
    label: str
    full: int  # how many in the full run
    quick: int  # how many in the --quick run
    target: str = ""  # the emulator fault target, for faults the sandbox plays
    fault: str = ""  # the emulator fault kind
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def emulated(self) -> bool:
        return bool(self.target)


def _emulated(target: str, key: str, what: str, full: int, fault: str, **params: Any) -> Kind:
    """A fault the sandbox plays on `target`'s next call (one of each in the quick run)."""
    system, call = target.split(".")
    name = {"whmcs": f"WHMCS {call}", "cometd": "CometD", "pubsub": "Pub/Sub"}[system]
    return Kind(key, f"{name} {what}", full, 1, target, fault, params)


ADD, ACCEPT = "whmcs.AddOrder", "whmcs.AcceptOrder"
CONNECT, FETCH = "cometd.connect", "pubsub.fetch"
# `hang` params are filled in by the injector: longer than the services' read timeouts. The
# stream's faults depend on the transport: STREAM_KINDS below, placed by kinds().
KINDS: tuple[Kind, ...] = (
    Kind("kill_worker", "kill -9 a worker (and its work horse)", 5, 2),
    Kind("kill_subscriber", "kill -9 the subscriber", 2, 1),
    Kind("restart_redis", "restart Redis (append-only on)", 1, 1),
    Kind("crash_redis", "kill -9 Redis (fsync every second: its last second lost)", 1, 1),
    Kind("unpublished", "approval whose event is never published", 4, 2),
    Kind("retry_activated", "Provision / Retry on an Activated order", 4, 2),
    Kind("refuse_outcome", "Salesforce refuses the outcome PATCH for a while, then takes it", 1, 1),
    Kind("revoke_token", "revoke every Salesforce token", 2, 1),
    _emulated(ADD, "add_503", "503", 3, "status", status=503),
    _emulated(ADD, "add_timeout", "timeout", 2, "hang"),
    _emulated(ADD, "add_commit_timeout", "commit-then-timeout", 3, "commit_then_hang"),
    _emulated(ACCEPT, "accept_503", "503", 2, "status", status=503),
    _emulated(ACCEPT, "accept_timeout", "timeout", 2, "hang"),
    _emulated(ACCEPT, "accept_commit_timeout", "commit-then-timeout", 2, "commit_then_hang"),
)
# The stream's own faults, in each transport's form.
STREAM_KINDS: dict[str, tuple[Kind, ...]] = {
    "cometd": (
        _emulated(CONNECT, "unknown_client", "403::Unknown client", 2, "unknown_client"),
        _emulated(CONNECT, "lost_batch", "lost batch", 2, "lost_batch"),
        _emulated(CONNECT, "duplicate", "duplicate delivery", 2, "duplicate"),
    ),
    "pubsub": (
        _emulated(FETCH, "stream_closed", "stream closed mid-flight", 2, "close"),
        _emulated(FETCH, "service_unavailable", "INTERNAL service unavailable", 2, "unavailable"),
        _emulated(FETCH, "pubsub_duplicate", "duplicate delivery", 2, "duplicate"),
        _emulated(
            FETCH, "no_keepalive", "silence: no event, no keepalive", 1, "silence", seconds=60
        ),
        _emulated(FETCH, "unauthenticated", "UNAUTHENTICATED mid-stream", 1, "unauthenticated"),
    ),
}
STREAM_TARGETS = ("cometd.", "pubsub.")


def kinds(transport: str = "cometd") -> tuple[Kind, ...]:
    """Every kind a run with this transport injects."""
    return KINDS[:4] + STREAM_KINDS[transport] + KINDS[4:]


BY_KEY = {kind.key: kind for kind in (*KINDS, *(k for ks in STREAM_KINDS.values() for k in ks))}
# Faults strike within this part of the load phase, so that the last orders, the reaper and the
# unknown-outcome window all finish before the checks.
EARLIEST, LATEST = 0.08, 0.7


@dataclass(frozen=True)
class Planned:
    at: float  # seconds after the load phase started
    kind: str


def plan(seed: int, duration: float, quick: bool, transport: str = "cometd") -> list[Planned]:
    """When each fault strikes, in order."""
    rng = random.Random(seed)
    planned = [
        Planned(round(rng.uniform(EARLIEST * duration, LATEST * duration), 2), kind.key)
        for kind in kinds(transport)
        for _ in range(kind.quick if quick else kind.full)
    ]
    return sorted(planned, key=lambda p: (p.at, p.kind))
