"""Measurement 2: publish to enqueue latency through the CometD long-poll.

A real `python -m subscriber` holds the long-poll on the sandbox; the bench publishes one event at
a time and reads the job's `enqueued_at` (RQ's own timestamp, in microseconds) from Redis. The
reference is the round trip of the publishing admin call itself: one loopback HTTP exchange.
"""

from __future__ import annotations

import sys
import time

from bench import rqjobs
from bench.harness import BenchError, Measurement, Run, median, p50_p99
from bench.rig import Rig, job_id
from shared.sfid import new_id

P99_TARGET_MS = 50.0
GAP_SECONDS = 0.02  # lets the subscriber re-issue its long-poll: each event meets a waiting poll


def measure(run: Run) -> Measurement:
    rig = Rig.of(run)
    result = Measurement(2, "latency", "Publish to enqueue latency (CometD long-poll)")
    count = run.size(300, 30)
    print(f"  2: {count} events", file=sys.stderr)
    subscriber = rig.start_subscriber()
    try:
        latencies, round_trips = publish_one_at_a_time(rig, count)
    finally:
        subscriber.stop()
    result.rows = p50_p99(
        "publish -> job enqueued",
        latencies,
        "loopback round trip of the publish call (median)",
        median(round_trips),
        P99_TARGET_MS,
    )
    result.params = {"events": count, "gap_ms": GAP_SECONDS * 1000}
    result.notes = [
        f"{count} events published one at a time, {GAP_SECONDS * 1000:.0f} ms apart, to a running "
        "`python -m subscriber` (JSON logs at INFO); latency = the job's enqueued_at minus the "
        "moment before the publish call, same clock.",
        f"max {max(latencies):.1f} ms, mean {sum(latencies) / len(latencies):.1f} ms.",
    ]
    return result


def publish_one_at_a_time(rig: Rig, count: int) -> tuple[list[float], list[float]]:
    """Events published `GAP_SECONDS` apart: ms from each publish to its job's enqueued_at, and
    the round trips of the publish calls."""
    latencies, round_trips = [], []
    for _ in range(count):
        time.sleep(GAP_SECONDS)
        before = time.time()
        event = rig.admin.publish({"OrderId__c": new_id("Order")})
        round_trips.append((time.time() - before) * 1000)
        latencies.append((enqueued_at(rig, job_id(event)) - before) * 1000)
    return latencies, round_trips


def enqueued_at(rig: Rig, job: str, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamp = rqjobs.epoch(rig.conn.hget(f"rq:job:{job}", "enqueued_at"))
        if stamp is not None:
            return stamp
        time.sleep(0.002)
    raise BenchError(f"job {job} not enqueued within {timeout:.0f}s of its event")
