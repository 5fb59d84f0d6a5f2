"""Sentinel failover under load: kill -9 the primary during a stream of approvals (sandbox ->
real subscriber -> real workers) and count what was lost.

No timed assertion: the recovery times and the losses are printed and, with FAILOVER_RESULTS set,
written as JSON for `python -m bench.failover` (README, "Redis failover").

What may be lost is what the replica had not received when the primary died (asynchronous
replication): a job enqueued, or a replay id stored, in those last milliseconds. Such an order is
left Activating in Salesforce; the lifecycle issue's reconciler re-enqueues it. Once that is
merged the loss assertion becomes `assert report.left_activating == []` (see LOSS_CHECK below).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from sandbox.fixtures import standard_document
from sandbox.http_server import wait_until
from shared import keys
from shared.config import DEFAULT_CHANNEL, load_settings
from shared.connections import redis_client

pytestmark = pytest.mark.slow

ORDERS = int(os.environ.get("FAILOVER_ORDERS", "16"))
APPROVE_EVERY = float(os.environ.get("FAILOVER_APPROVE_EVERY", "0.25"))
WORKERS = 2
SUBSCRIBED = "Subscribed to platform event channel"
SETTLE_TIMEOUT = 90.0
# Approvals published this close before the kill may have been enqueued on the old primary only.
LAG_WINDOW = 1.0


@dataclass
class Report:
    orders: int
    primary_killed_after: int  # approvals before the kill
    writes_resumed_s: float = 0.0  # kill -> a write through the factory's Sentinel client works
    first_activation_after_kill_s: float | None = None  # kill -> an order approved later Activated
    activated: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # order -> error code
    left_activating: list[str] = field(default_factory=list)
    lost_jobs: list[str] = field(default_factory=list)  # left Activating with no job in Redis
    approvals_in_lag_window: int = 0
    replay_stored: int | None = None
    replay_published: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Approver(threading.Thread):
    """Approves orders one by one at a steady pace, recording when each event was published."""

    def __init__(self, admin: Any, order_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.admin = admin
        self.order_ids = order_ids
        self.published: dict[str, tuple[float, int]] = {}  # order -> (monotonic, replay id)

    def run(self) -> None:
        for order_id in self.order_ids:
            event = self.admin.approve(order_id)
            self.published[order_id] = (time.monotonic(), int(event["event"]["replayId"]))
            time.sleep(APPROVE_EVERY)


def test_a_sentinel_failover_under_a_stream_of_approvals(
    sentinels, sandbox, sandbox_admin, sqlite_url, sqlite_engine, services
):
    # Only the private Sentinel-managed servers: TEST_REDIS_URL is not touched (the bench runs
    # this test too).
    env = {
        **sandbox.env,
        "DATABASE_URL": sqlite_url,
        "SF_EVENTS_ENABLED": "true",
        "APP_ENV": "test",
        **sentinels.env(),
    }
    conn = redis_client(load_settings(env).redis)
    refs = sandbox_admin.load(standard_document(orders=ORDERS))["refs"]
    order_ids = [refs[f"o{n}"] for n in range(1, ORDERS + 1)]
    subscriber = services.start("subscriber", env)
    for n in range(WORKERS):
        services.start("worker", env, "--name", f"failover-{n}")
    subscriber.wait_for_message(SUBSCRIBED, timeout=30)

    approver = Approver(sandbox_admin, order_ids)
    approver.start()
    report = Report(orders=ORDERS, primary_killed_after=ORDERS // 2)
    assert wait_until(lambda: len(approver.published) >= report.primary_killed_after, timeout=60)
    sentinels.kill_primary()
    killed_at = time.monotonic()
    assert wait_until(lambda: _writes(conn), timeout=60), "no primary after the failover"
    report.writes_resumed_s = round(time.monotonic() - killed_at, 2)
    approver.join(timeout=120)

    later = [o for o, (at, _) in approver.published.items() if at > killed_at]
    settled = wait_until(
        lambda: (
            _record_activation(sandbox_admin, later, killed_at, report)
            and not _activating(sandbox_admin, order_ids)
        ),
        timeout=SETTLE_TIMEOUT,
    )
    _account(report, sandbox_admin, conn, order_ids, approver, killed_at)
    print(f"failover: {json.dumps(report.as_dict())}")
    if os.environ.get("FAILOVER_RESULTS"):
        Path(os.environ["FAILOVER_RESULTS"]).write_text(json.dumps(report.as_dict(), indent=2))

    assert all(service.alive() for service in services.started), "a process gave up on Redis"
    assert report.first_activation_after_kill_s is not None, "nothing approved after the kill ran"
    assert report.failed == {}, "a job failed on the failover instead of riding it out"
    assert report.replay_stored == report.replay_published, "the stored replay id fell behind"
    # LOSS_CHECK: with the reconciler merged, this becomes: assert report.left_activating == []
    assert len(report.left_activating) <= report.approvals_in_lag_window, report
    assert settled or report.left_activating, "orders still moving after the settle timeout"


def _writes(conn: redis.Redis) -> bool:
    try:
        conn.set("failover:probe", "1")
        return True
    except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
        return False


def _activating(admin: Any, order_ids: list[str]) -> list[str]:
    states = {o["Id"]: o.get("Activation_Status__c") for o in admin.orders()}
    return [o for o in order_ids if states.get(o) == "Activating"]


def _record_activation(admin: Any, later: list[str], killed_at: float, report: Report) -> bool:
    """True once an order approved after the kill is Activated (and its time recorded)."""
    if report.first_activation_after_kill_s is None:
        states = {o["Id"]: o.get("Activation_Status__c") for o in admin.orders()}
        if any(states.get(o) == "Activated" for o in later):
            report.first_activation_after_kill_s = round(time.monotonic() - killed_at, 2)
    return report.first_activation_after_kill_s is not None or not later


def _account(
    report: Report,
    admin: Any,
    conn: redis.Redis,
    order_ids: list[str],
    approver: Approver,
    killed_at: float,
) -> None:
    orders = {o["Id"]: o for o in admin.orders()}
    for order_id in order_ids:
        state = orders[order_id].get("Activation_Status__c")
        if state == "Activated":
            report.activated += 1
        elif state == "Failed":
            report.failed[order_id] = str(orders[order_id].get("Activation_Error_Code__c"))
        elif state == "Activating":
            report.left_activating.append(order_id)
    queued = {j.decode() for j in conn.keys("rq:job:*")}
    report.lost_jobs = [
        o for o in report.left_activating if not any(o in job for job in _job_orders(conn, queued))
    ]
    report.approvals_in_lag_window = sum(
        1 for at, _ in approver.published.values() if killed_at - LAG_WINDOW <= at <= killed_at
    )
    raw = conn.get(keys.replay_key(DEFAULT_CHANNEL))
    report.replay_stored = int(raw) if raw is not None else None
    report.replay_published = max(replay for _, replay in approver.published.values())


def _job_orders(conn: redis.Redis, job_keys: set[str]) -> list[str]:
    """Each job's description (it names the order), to find an order's job without RQ."""
    return [(conn.hget(key, "description") or b"").decode() for key in job_keys]
