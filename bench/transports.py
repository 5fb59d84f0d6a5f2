"""Measurement 8: the two event transports side by side, on the same sandbox in the same run.

For CometD and then the Pub/Sub API, a real `python -m subscriber` (SF_EVENTS_TRANSPORT) takes:
events published one at a time (publish -> job enqueued, p50 and p99, as measurement 2), then a
burst published as fast as the sandbox takes them in-process (events/s from the first publish to
the last job's enqueued_at). The subscriber's own CPU (user + system, /proc) over both parts,
divided by the events it took, is its CPU per event.
"""

from __future__ import annotations

import sys
import time

from bench import cpu
from bench.harness import Measurement, Row, Run, median, percentile
from bench.latency import GAP_SECONDS, enqueued_at, publish_one_at_a_time
from bench.rig import Rig, job_id
from shared.sfid import new_id

TRANSPORTS = ("cometd", "pubsub")


def measure(run: Run) -> Measurement:
    rig = Rig.of(run)
    result = Measurement(8, "transports", "Event transports side by side (CometD, Pub/Sub)")
    singles, burst = run.size(200, 20), run.size(2000, 100)
    figures = {name: _one(rig, name, singles, burst) for name in TRANSPORTS}
    base = figures["cometd"]
    for name in TRANSPORTS:
        mine = figures[name]
        reference = "CometD" if name != "cometd" else ""
        for label, key, unit in (
            ("publish -> job enqueued, p50", "p50", "ms"),
            ("publish -> job enqueued, p99", "p99", "ms"),
            ("burst throughput", "rate", "events/s"),
            ("subscriber CPU per event", "cpu", "ms"),
        ):
            result.rows.append(
                Row(
                    f"{name}: {label}",
                    mine[key],
                    unit,
                    reference,
                    base[key] if name != "cometd" else None,
                )
            )
    result.params = {"events_one_at_a_time": singles, "burst": burst, "gap_ms": GAP_SECONDS * 1000}
    result.notes = [
        "Same sandbox, Redis and intake for both; only SF_EVENTS_TRANSPORT differs. The sandbox "
        f"holds CometD long-polls open and paces Pub/Sub keepalives alike; {singles} events one "
        f"at a time {GAP_SECONDS * 1000:.0f} ms apart, then a burst of {burst} published "
        "in-process; CPU per event = the subscriber process's user+system CPU over both parts "
        "divided by the events it took.",
        *(
            f"{name}: round trip of the publish call {figures[name]['round_trip']:.1f} ms "
            f"(median); burst enqueued in {figures[name]['burst_seconds']:.2f} s."
            for name in TRANSPORTS
        ),
    ]
    return result


def _one(rig: Rig, transport: str, singles: int, burst: int) -> dict[str, float]:
    print(f"  7: {transport}: {singles} events one at a time, a burst of {burst}", file=sys.stderr)
    subscriber = rig.start_subscriber(SF_EVENTS_TRANSPORT=transport)
    try:
        cpu_before = cpu.processes_cpu([subscriber.pid])
        latencies, round_trips = publish_one_at_a_time(rig, singles)
        started = time.time()
        last = {}
        for _ in range(burst):
            last = rig.sandbox.salesforce.publish_event({"OrderId__c": new_id("Order")})
        finished = enqueued_at(rig, job_id(last), timeout=120.0)
        used = cpu.processes_cpu([subscriber.pid]) - cpu_before
    finally:
        subscriber.stop()
    seconds = max(finished - started, 1e-6)
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "rate": burst / seconds,
        "cpu": used / (singles + burst) * 1000,
        "round_trip": median(round_trips),
        "burst_seconds": seconds,
    }
