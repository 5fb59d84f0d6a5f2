"""Probes behind /health, /metrics and `provisioner doctor`: bounded in time, free of side effects.

A probe runs in a daemon thread and the caller stops waiting at a deadline, so a hung dependency
(a stopped Redis, a firewalled database) costs a "timeout" line, never a hung request. Probes of
the same name share one flight: while one is still stuck, later requests wait on it instead of
starting another, so a dead database holds one thread, not one per request.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue, worker_registration
from rq.registry import FailedJobRegistry, StartedJobRegistry
from sqlalchemy import Engine, text

from shared import db, keys, outbox
from shared.errors import short_message
from shared.logs import scrub

# A /meta/connect is answered within the advised long-poll timeout (Salesforce: 110 s) even with
# no events; the subscriber counts as stalled when its last reply is older than that plus slack.
STALE_FACTOR = 1.25
STALE_SLACK = 5.0
DEFAULT_ADVISED_TIMEOUT = 110.0


@dataclass(frozen=True)
class Probe:
    """One dependency's answer: `connected`, `error` or `timeout`, with what it cost."""

    status: str
    latency_ms: float
    error: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "connected"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "latency_ms": round(self.latency_ms, 1)}
        if self.error:
            out["error"] = self.error
        out.update(self.details)
        return out


def describe_error(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """A short, secret-free line for a reply: class name and the first words of the message."""
    return short_message(scrub(f"{type(exc).__name__}: {exc}"), secrets)[:200]


def timed(fn: Callable[[], Mapping[str, Any] | None], secrets: tuple[str, ...] = ()) -> Probe:
    """Run one probe body; any exception becomes an `error` Probe."""
    started = time.perf_counter()
    try:
        details = fn() or {}
    except Exception as exc:  # a probe reports every failure instead of raising it
        return Probe("error", _ms_since(started), describe_error(exc, secrets))
    return Probe("connected", _ms_since(started), details=details)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class Flights:
    """Runs named probes in daemon threads; one flight per name at a time.

    A flight stuck longer than `abandon_after` (a driver call with no timeout of its own) is left
    to its thread and a new one starts, so a dependency that comes back is seen again.
    """

    def __init__(self, abandon_after: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.abandon_after = abandon_after
        self.clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, tuple[float, concurrent.futures.Future[Probe]]] = {}

    def start(self, name: str, fn: Callable[[], Probe]) -> concurrent.futures.Future[Probe]:
        now = self.clock()
        with self._lock:
            started, future = self._running.get(name, (now, None))
            if future is not None and not future.done() and now - started < self.abandon_after:
                return future
            future = concurrent.futures.Future()
            self._running[name] = (now, future)
        # Daemon: a thread stuck in a driver call must never keep the process from exiting.
        thread = threading.Thread(target=_fly, args=(future, fn), name=f"probe-{name}", daemon=True)
        thread.start()
        return future

    def run(self, probes: Mapping[str, Callable[[], Probe]], timeout: float) -> dict[str, Probe]:
        """Start every probe, wait at most `timeout` seconds, report the late ones as timeouts."""
        futures = {name: self.start(name, fn) for name, fn in probes.items()}
        concurrent.futures.wait(futures.values(), timeout=timeout)
        return {name: _outcome(future, timeout) for name, future in futures.items()}


def _fly(future: concurrent.futures.Future[Probe], fn: Callable[[], Probe]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as exc:  # never lose a failure inside a thread nobody joins
        future.set_exception(exc)


def _outcome(future: concurrent.futures.Future[Probe], timeout: float) -> Probe:
    if not future.done():
        return Probe("timeout", timeout * 1000, f"no answer within {timeout:g} s")
    exc = future.exception()
    if exc is not None:
        return Probe("error", 0.0, describe_error(exc))
    return future.result()


# --- the probe bodies -------------------------------------------------------------------------


def ping_redis(conn: redis.Redis) -> dict[str, Any]:
    conn.ping()
    return {}


def ping_database(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        revision = db.current_revision(conn)
    return {"schema_version": revision, "schema_current": revision == db.head()}


def queue_stats(conn: redis.Redis, queue_name: str) -> dict[str, int]:
    """Depth, started and failed counts and live workers, without RQ's cleanup side effects."""
    queue = Queue(queue_name, connection=conn)
    return {
        "depth": queue.count,
        # cleanup=False: the default would run abandoned-job handling in this process.
        "started": StartedJobRegistry(queue=queue).get_job_count(cleanup=False),
        "failed": FailedJobRegistry(queue=queue).get_job_count(cleanup=False),
        "workers": live_workers(conn, queue),
    }


def live_workers(conn: redis.Redis, queue: Queue) -> int:
    """Registered workers whose own key still exists (a killed worker's key expires)."""
    worker_keys = sorted(worker_registration.get_keys(queue=queue))
    if not worker_keys:
        return 0
    pipe = conn.pipeline(transaction=False)
    for key in worker_keys:
        pipe.exists(key)
    return sum(1 for alive in pipe.execute() if alive)


def read_heartbeat(conn: redis.Redis, channel: str) -> dict[str, str]:
    raw = conn.hgetall(keys.heartbeat_key(channel))
    return {_text(k): _text(v) for k, v in raw.items()}


def read_replay_id(conn: redis.Redis, channel: str) -> int | None:
    return as_int(conn.get(keys.replay_key(channel)))


def read_position(conn: redis.Redis, channel: str, transport: str) -> dict[str, Any]:
    """The stored position of the transport in use. Pub/Sub ids are opaque bytes: shown as hex,
    and as the number an 8-byte one carries (what the jobs and the replay_id gauge hold)."""
    if transport != "pubsub":
        return {"transport": "cometd", "replay_id": read_replay_id(conn, channel)}
    raw = conn.get(keys.pubsub_replay_key(channel))
    hexid = _text(raw) if raw is not None else None
    number = int(hexid, 16) if hexid and len(hexid) == 16 and _is_hex(hexid) else None
    return {"transport": "pubsub", "replay_id": number, "replay_id_bytes": hexid}


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def replay_storage(conn: redis.Redis, queue_name: str, channel: str, now: float) -> dict[str, Any]:
    """The runbook's `integrations.redis` probe: queue and replay storage as the pipeline sees.

    The transport is the one the subscriber declared in its heartbeat (SF_EVENTS_TRANSPORT)."""
    heartbeat = read_heartbeat(conn, channel)
    transport = heartbeat.get("transport") or "cometd"
    return {
        "queue": {"name": queue_name, **queue_stats(conn, queue_name)},
        "replay": {"channel": channel, **read_position(conn, channel, transport)},
        "subscriber": subscriber_status(heartbeat, now),
        "outbox": waiting_outcomes(conn, now),
    }


def waiting_outcomes(conn: redis.Redis, now: float) -> dict[str, Any]:
    """Outcomes Salesforce has not taken yet (prov:outbox), and the oldest one's age."""
    count, oldest = outbox.summary(conn, now)
    return {"waiting": count, "oldest_age_seconds": oldest}


# --- pure decisions ---------------------------------------------------------------------------


def subscriber_status(heartbeat: Mapping[str, str], now: float) -> dict[str, Any]:
    """Summarise the subscriber heartbeat hash (docs/design.md) as of `now` (epoch seconds)."""
    last_connect = as_float(heartbeat.get("last_connect_at"))
    return {
        "active": is_active(heartbeat, now),
        "state": heartbeat.get("state") or None,
        "holder": heartbeat.get("holder") or None,
        "heartbeat_age_seconds": _age(as_float(heartbeat.get("updated_at")), now),
        "last_connect_age_seconds": _age(last_connect, now),
        "last_event_age_seconds": _age(as_float(heartbeat.get("last_event_at")), now),
        "last_replay_id": as_int(heartbeat.get("last_replay_id")),
        "replay_fallbacks": as_int(heartbeat.get("replay_fallbacks")) or 0,
        "events_enqueued": as_int(heartbeat.get("events_enqueued")) or 0,
    }


def is_active(heartbeat: Mapping[str, str], now: float) -> bool:
    """Connected, and the last successful /meta/connect is no later than the long poll allows."""
    if heartbeat.get("state") != "connected":
        return False
    last_connect = as_float(heartbeat.get("last_connect_at"))
    if last_connect is None:
        return False
    return now - last_connect <= stale_after(heartbeat)


def stale_after(heartbeat: Mapping[str, str]) -> float:
    advised = as_float(heartbeat.get("advised_timeout")) or DEFAULT_ADVISED_TIMEOUT
    return advised * STALE_FACTOR + STALE_SLACK


def overall(database: Probe, redis_probe: Probe) -> tuple[str, int]:
    """`unavailable` (503) unless the database and Redis both answer."""
    if not (database.ok and redis_probe.ok):
        return "unavailable", 503
    return "ok", 200


def warnings(database: Probe, integrations: Probe) -> list[str]:
    """What is wrong although the stores answer: old schema, no workers, subscriber not active."""
    found = []
    if database.ok and not database.details.get("schema_current"):
        found.append(
            f"database schema at revision {database.details.get('schema_version') or 'none'}, "
            f"this release needs {db.head()}: run `provisioner db upgrade`"
        )
    if not integrations.ok:
        return [*found, f"queue and replay storage probe: {integrations.status}"]
    if not integrations.details["queue"]["workers"]:
        found.append("no live worker on the queue")
    subscriber = integrations.details["subscriber"]
    if not subscriber["active"]:
        found.append(f"subscriber not active (state: {subscriber['state'] or 'no heartbeat'})")
    waiting = integrations.details.get("outbox") or {}
    if waiting.get("waiting"):
        found.append(
            f"{waiting['waiting']} outcome(s) wait for delivery to Salesforce "
            f"(oldest {waiting['oldest_age_seconds']} s): see prov:outbox"
        )
    return found


def _age(then: float | None, now: float) -> float | None:
    return None if then is None else round(max(0.0, now - then), 3)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def as_float(value: bytes | str | None) -> float | None:
    if value is None or value in ("", b""):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def as_int(value: bytes | str | None) -> int | None:
    number = as_float(value)
    return None if number is None else int(number)
