"""Striking the faults, and noting for each what it may have hit.

Process faults (kills, the Redis restart and crash, the token revocation) act at once; the
injector notes the orders in flight at that moment and, for the ones that stop the stream, the
window until the subscriber has a successful /meta/connect again: orders approved in it waited
for the recovery. Emulator faults (CometD, WHMCS) are queued in the sandbox's FaultBook and strike
the next call; `FireLog` notes when each one fired. Salesforce-side faults act through the admin
API: an approval with no event (claimed by the next approval of the load), a Provision / Retry on
an Activated order, and a window in which field access is removed so that every outcome PATCH is
refused.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from bench.chaos.schedule import BY_KEY, STREAM_TARGETS, Kind
from bench.chaos.stage import ChaosStack
from provisioner.kit.supervisor import Child
from sandbox.client import SandboxAdmin
from sandbox.http_server import wait_until
from shared import keys
from shared.config import DEFAULT_CHANNEL
from shared.connections import redis_client
from worker import lease as leases

RECOVERY_TIMEOUT = 90.0
REDIS_DOWN_FOR = 3.0  # seconds Redis stays down: long enough for every process to notice
ACTIVATED_WAIT = 10.0  # seconds a Retry on an Activated order waits for one to exist
# Removing write access to this field makes Salesforce refuse every outcome PATCH (Failed and
# Activated both write it): HTTP 400 INVALID_FIELD_FOR_INSERT_UPDATE, as for a permission set
# changed under the integration user.
REFUSED_FIELD = "Activation_Error_Code__c"
REFUSED_CODE = "400"  # the refusal's code in the workers' logs (update_error_code)
STREAM_FRESH = 2.0  # a successful /meta/connect this recent: events are flowing
BUSY_WAIT = 3.0  # seconds a worker kill waits for a worker that holds an order


@dataclass
class Injection:
    kind: str
    at: float  # seconds since the run started
    detail: str = ""
    hit: set[str] = field(default_factory=set)  # orders known to be in its way
    window: list[float] = field(default_factory=list)  # [start, end]: approvals in it waited
    fault: Any = None  # the sandbox's Fault, for emulator faults
    took: bool = True  # False: it found nothing to strike (no approval left, no Activated order)
    kept: dict[str, str] = field(default_factory=dict)  # Retry on Activated: order -> WHMCS id


class Timeline:
    """When each order was approved (its event published), in run seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.approvals: list[tuple[float, str]] = []

    def add(self, at: float, order_id: str) -> None:
        with self._lock:
            self.approvals.append((at, order_id))

    def between(self, start: float, end: float) -> set[str]:
        with self._lock:
            return {order for at, order in self.approvals if start <= at <= end}


class FireLog:
    """Wraps the FaultBook's `take` to note when each emulator fault first fired."""

    def __init__(self, faults: Any, clock: Callable[[], float]) -> None:
        self._take = faults.take
        self._clock = clock
        self._lock = threading.Lock()
        self.fired_at: dict[int, float] = {}
        faults.take = self._taken

    def _taken(self, target: str) -> Any:
        fault = self._take(target)
        if fault is not None:
            with self._lock:
                self.fired_at.setdefault(id(fault), self._clock())
        return fault

    def when(self, fault: Any) -> float | None:
        """When `fault` fired; None if it has not (or is None: the injection had no fault)."""
        with self._lock:
            return self.fired_at.get(id(fault))


class MintLog:
    """Wraps the sandbox's token minting to keep every access token, to search outputs for."""

    def __init__(self, tokens: Any) -> None:
        self._mint = tokens.mint
        self.minted: list[str] = []
        tokens.mint = self._minted

    def _minted(self) -> str:
        token = self._mint()
        self.minted.append(token)
        return token


class Injector:
    def __init__(
        self,
        stack: ChaosStack,
        clock: Callable[[], float],
        rng: random.Random,
        refuse_seconds: float,
        approved: Sequence[str],
    ) -> None:
        self.supervisor = stack.supervisor
        self.redis_server = stack.redis
        self.sandbox = stack.sandbox
        self.admin = SandboxAdmin(stack.sandbox.admin_url)  # its own session: the load uses another
        self.clock = clock
        self.rng = rng
        # Longer than the services' WHMCS timeouts: the call must time out, not be answered.
        self.hang_seconds = stack.tuning.whmcs_write_timeout + 3
        self.refuse_seconds = refuse_seconds
        self.approved = approved  # the load's list of approved orders, as it grows
        self.injections: list[Injection] = []
        self._watchers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._unclaimed: list[Injection] = []

    def inject(self, key: str) -> Injection:
        kind = BY_KEY[key]
        injection = Injection(key, self.clock())
        if kind.emulated:
            self._emulated(kind, injection)
        else:
            getattr(self, f"_{key}")(injection)
        self.injections.append(injection)
        return injection

    def wait_for_recoveries(self) -> None:
        for watcher in self._watchers:
            watcher.join(timeout=RECOVERY_TIMEOUT)

    def claim_unpublished(self, order_id: str) -> bool:
        """True: approve `order_id` without its event (an `unpublished` fault is waiting)."""
        with self._lock:
            if not self._unclaimed:
                return False
            injection = self._unclaimed.pop(0)
        injection.hit, injection.took = {order_id}, True
        injection.detail = f"{order_id}: Activating, no event published"
        return True

    def retried_activated(self) -> dict[str, str]:
        """Activated orders Retried during the run -> the WHMCS order id they recorded."""
        return {
            o: w for i in self.injections if i.kind == "retry_activated" for o, w in i.kept.items()
        }

    # --- the kinds ---

    def _emulated(self, kind: Kind, injection: Injection) -> None:
        if kind.target.startswith(STREAM_TARGETS):
            # A stream fault only means something while events flow: not while the subscriber
            # is away (after a kill it waits out the old leader lock).
            _wait_for_stream(self.redis_server.url)
            injection.at = self.clock()
        params = dict(kind.params)
        if kind.fault in ("hang", "commit_then_hang"):
            params["seconds"] = self.hang_seconds
        injection.fault = self.sandbox.faults.add(kind.target, kind.fault, 1, **params)
        injection.detail = f"{kind.target} {kind.fault}"

    def _kill_worker(self, injection: Injection) -> None:
        workers, inflight, busy = self._busy_workers()
        victim = self.rng.choice(busy or workers)
        injection.hit = {o for o, name in inflight.items() if name == victim.current_name}
        injection.detail = f"{victim.current_name} (pid {victim.pid})"
        injection.at = self.clock()  # the moment of death starts the abandoned-job window
        self.supervisor.kill9(victim)

    def _busy_workers(self) -> tuple[list[Child], dict[str, str], list[Child]]:
        """Running workers, the orders in flight, and the workers holding one: a kill that hits
        an order is the one worth making, so wait a moment for one to be busy."""
        deadline = time.monotonic() + BUSY_WAIT
        while True:
            workers = self._alive("chaos-w")
            inflight = _inflight(self.redis_server.url)
            busy = [w for w in workers if w.current_name in inflight.values()]
            if busy or time.monotonic() > deadline:
                return workers, inflight, busy
            time.sleep(0.02)

    def _alive(self, prefix: str) -> list[Child]:
        """The running services (one killed a moment ago may not be back yet)."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while True:
            alive = [s for s in self.supervisor.named(prefix) if s.alive()]
            if alive or time.monotonic() > deadline:
                return alive or self.supervisor.named(prefix)
            time.sleep(0.1)

    def _kill_subscriber(self, injection: Injection) -> None:
        subscriber = self._alive("chaos-subscriber")[0]
        injection.detail = f"{subscriber.current_name} (pid {subscriber.pid})"
        injection.at = self.clock()
        since = time.time()
        self.supervisor.kill9(subscriber)
        self._until_reconnected(injection, since)

    def _restart_redis(self, injection: Injection) -> None:
        injection.hit = set(_inflight(self.redis_server.url))
        self.redis_server.restart(REDIS_DOWN_FOR)
        injection.detail = f"SIGTERM, down {REDIS_DOWN_FOR:g} s, started again"
        self._until_reconnected(injection, time.time())

    def _crash_redis(self, injection: Injection) -> None:
        injection.hit = set(_inflight(self.redis_server.url))
        self.redis_server.crash(REDIS_DOWN_FOR)
        injection.detail = f"SIGKILL, down {REDIS_DOWN_FOR:g} s, started on the same AOF"
        self._until_reconnected(injection, time.time())

    def _unpublished(self, injection: Injection) -> None:
        injection.took = False
        injection.detail = "the next approval sets Activating and publishes no event"
        with self._lock:
            self._unclaimed.append(injection)

    def _retry_activated(self, injection: Injection) -> None:
        """Press Provision / Retry on an order that is Activated (it must stay so, on the WHMCS
        order it records, with no second one)."""
        deadline = time.monotonic() + ACTIVATED_WAIT
        retried = set(self.retried_activated())
        while True:
            approved = set(self.approved)
            activated = sorted(
                o["Id"]
                for o in self.admin.orders()
                if o["Id"] in approved
                and o["Id"] not in retried
                and o.get("Activation_Status__c") == "Activated"
                and o.get("WHMCS_Order_ID__c")
            )
            if activated or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        injection.at = self.clock()
        if not activated:
            injection.took, injection.detail = False, "no Activated order to Retry"
            return
        order_id = self.rng.choice(activated)
        whmcs_order_id = str(self.admin.order(order_id)["WHMCS_Order_ID__c"])
        reply = self.admin.retry(order_id)
        injection.hit, injection.kept = {order_id}, {order_id: whmcs_order_id}
        injection.detail = f"{order_id} (WHMCS order {whmcs_order_id}): {reply['result']}"

    def _refuse_outcome(self, injection: Injection) -> None:
        """Remove the integration user's write access to a field every outcome PATCH writes, for
        `refuse_seconds`, with one order made to fail in WHMCS meanwhile (so a Failed outcome is
        among the refused); then restore it. The outbox must deliver every refused outcome."""
        self.admin.set_field_access(REFUSED_FIELD, updateable=False)
        injection.fault = self.sandbox.faults.add(
            "whmcs.AddOrder", "error", 1, message="Chaos: order refused while Salesforce refuses"
        )
        injection.window = [injection.at, injection.at]
        injection.detail = (
            f"{REFUSED_FIELD} not writable for {self.refuse_seconds:g} s (HTTP 400 "
            "INVALID_FIELD_FOR_INSERT_UPDATE); one AddOrder answers result=error meanwhile"
        )

        def restore() -> None:
            time.sleep(self.refuse_seconds)
            admin = SandboxAdmin(self.sandbox.admin_url)  # the striker's session is busy
            try:
                admin.set_field_access(REFUSED_FIELD, updateable=True)
            finally:
                admin.close()
            injection.window[1] = self.clock()

        watcher = threading.Thread(target=restore, name="restore-field-access", daemon=True)
        watcher.start()
        self._watchers.append(watcher)

    def _revoke_token(self, injection: Injection) -> None:
        injection.hit = set(_inflight(self.redis_server.url))
        self.sandbox.salesforce.tokens.revoke_all()
        injection.detail = "every issued access token answers 401"
        self._until_reconnected(injection, time.time())

    def _until_reconnected(self, injection: Injection, since_epoch: float) -> None:
        """Fill in the injection's window once the subscriber connects again (in a thread)."""
        injection.window = [injection.at, injection.at]
        url = self.redis_server.url

        def watch() -> None:
            wait_until(lambda: _last_connect(url) > since_epoch, RECOVERY_TIMEOUT, 0.1)
            injection.window[1] = self.clock()

        watcher = threading.Thread(target=watch, name=f"recovery-{injection.kind}", daemon=True)
        watcher.start()
        self._watchers.append(watcher)


def _inflight(url: str) -> dict[str, str]:
    """Order id -> the worker holding it, from prov:inflight (empty if Redis is away)."""
    try:
        with redis_client(url, socket_timeout=2.0) as conn:
            entries = leases.entries(conn)
    except redis.RedisError:
        return {}
    loaded = {order_id: leases.InflightEntry.loads(raw) for order_id, raw in entries.items()}
    return {order_id: entry.worker for order_id, entry in loaded.items() if entry is not None}


def _wait_for_stream(url: str) -> None:
    wait_until(lambda: time.time() - _last_connect(url) <= STREAM_FRESH, RECOVERY_TIMEOUT, 0.1)


def _last_connect(url: str) -> float:
    try:
        with redis_client(url, socket_timeout=1.0) as conn:
            raw = conn.hget(keys.heartbeat_key(DEFAULT_CHANNEL), "last_connect_at")
        return float(raw) if raw else 0.0
    except (redis.RedisError, ValueError):
        return 0.0
