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
    Kind("add_503", "WHMCS AddOrder 503", 3, 1, "whmcs.AddOrder", "status", {"status": 503}),
    Kind("add_timeout", "WHMCS AddOrder timeout", 2, 1, "whmcs.AddOrder", "hang"),
    Kind(
        "add_commit_timeout",
        "WHMCS AddOrder commit-then-timeout",
        3,
        1,
        "whmcs.AddOrder",
        "commit_then_hang",
    ),
    Kind(
        "accept_503", "WHMCS AcceptOrder 503", 2, 1, "whmcs.AcceptOrder", "status", {"status": 503}
    ),
    Kind("accept_timeout", "WHMCS AcceptOrder timeout", 2, 1, "whmcs.AcceptOrder", "hang"),
    Kind(
        "accept_commit_timeout",
        "WHMCS AcceptOrder commit-then-timeout",
        2,
        1,
        "whmcs.AcceptOrder",
        "commit_then_hang",
    ),
)
# The stream's own faults, in each transport's form.
STREAM_KINDS: dict[str, tuple[Kind, ...]] = {
    "cometd": (
        Kind(
            "unknown_client", "CometD 403::Unknown client", 2, 1, "cometd.connect", "unknown_client"
        ),
        Kind("lost_batch", "CometD lost batch", 2, 1, "cometd.connect", "lost_batch"),
        Kind("duplicate", "CometD duplicate delivery", 2, 1, "cometd.connect", "duplicate"),
    ),
    "pubsub": (
        Kind("stream_closed", "Pub/Sub stream closed mid-flight", 2, 1, "pubsub.fetch", "close"),
        Kind(
            "service_unavailable",
            "Pub/Sub INTERNAL service unavailable",
            2,
            1,
            "pubsub.fetch",
            "unavailable",
        ),
        Kind("pubsub_duplicate", "Pub/Sub duplicate delivery", 2, 1, "pubsub.fetch", "duplicate"),
        Kind(
            "no_keepalive",
            "Pub/Sub silence: no event, no keepalive",
            1,
            1,
            "pubsub.fetch",
            "silence",
            {"seconds": 60},
        ),
        Kind(
            "unauthenticated",
            "Pub/Sub UNAUTHENTICATED mid-stream",
            1,
            1,
            "pubsub.fetch",
            "unauthenticated",
        ),
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
