"""Measurement 1: the subscriber's per-event intake against a bare enqueue and a raw RPUSH.

The three take turns event by event on one connection, so a noisy neighbour slows all of them
alike; each figure is the median time per call.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue

from bench.harness import Measurement, Row, Run, Target, median, percentile
from bench.harness import reset_database as reset
from shared import keys
from shared.config import DEFAULT_CHANNEL
from shared.queueing import FAILURE_TTL, JOB_PATH, RESULT_TTL, job_id_for, provisioning_queue
from shared.sfid import new_id
from subscriber.intake import Intake, job_description, job_event, job_meta

QUEUE = "provisioning"
JOB_TIMEOUT = 600
LEADER_KEY = keys.leader_key(DEFAULT_CHANNEL)
HOLDER = "bench-host:1"
INTAKE_TARGET = Target(1.3)
Call = Callable[[dict[str, Any]], object]


def cometd_events(count: int, start: int) -> list[dict[str, Any]]:
    """CometD event `data` as the subscriber receives it, each with its own EventUuid."""
    return [
        {
            "schema": "bench",
            "payload": {
                "CreatedDate": "2026-04-09T18:31:40.517Z",
                "CreatedById": "0055g00000BENCHAAA",
                "OrderId__c": new_id("Order"),
            },
            "event": {"replayId": start + i, "EventUuid": str(uuid.uuid4())},
        }
        for i in range(count)
    ]


def measure(run: Run) -> Measurement:
    result = Measurement(1, "enqueue", "Enqueue path")
    conn = run.redis()
    count = run.size(3000, 300)
    _fresh(conn)
    queue = provisioning_queue(conn, QUEUE, JOB_TIMEOUT)
    intake = Intake(
        conn, queue, DEFAULT_CHANNEL, job_timeout=JOB_TIMEOUT, fence=(LEADER_KEY, HOLDER)
    )
    contenders = {
        "rpush": lambda data: conn.rpush("bench:floor", json.dumps(data)),
        "enqueue": _bare_enqueue(queue),
        "intake": intake.accept,
    }
    print(f"  1: {count} events x {len(contenders)} ways", file=sys.stderr)
    timings = _interleaved(contenders, count)
    _fresh(conn)
    result.rows = _rows({name: median(values) for name, values in timings.items()})
    result.params = {"events": count}
    result.notes = [
        "Median time per call; the three calls take turns event by event (rotating who goes "
        "first) on one connection, so machine noise hits them alike. The intake runs as in "
        "the subscriber: leader fence checked, JSON log line written (to /dev/null).",
        "Mean / p90 per call (us): "
        + "; ".join(
            f"{name} {sum(v) / len(v):.0f} / {percentile(v, 90):.0f}" for name, v in timings.items()
        )
        + ".",
    ]
    return result


def _interleaved(contenders: dict[str, Call], count: int) -> dict[str, list[float]]:
    names = list(contenders)
    batches = {name: cometd_events(count, start=1 + n * count) for n, name in enumerate(names)}
    timings: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for i in range(count):
        turn = i % len(names)
        for name in names[turn:] + names[:turn]:
            call, data = contenders[name], batches[name][i]
            started = clock()
            call(data)
            timings[name].append((clock() - started) * 1e6)
    return timings


def _rows(us: dict[str, float]) -> list[Row]:
    return [
        Row("raw Redis RPUSH of the event JSON (floor)", us["rpush"], "us"),
        Row("bare Queue.enqueue of the same event", us["enqueue"], "us", "raw RPUSH", us["rpush"]),
        Row(
            "subscriber intake per event (dedupe, enqueue, replay save)",
            us["intake"],
            "us",
            "bare Queue.enqueue",
            us["enqueue"],
            INTAKE_TARGET,
        ),
    ]


def _fresh(conn: redis.Redis) -> None:
    reset(conn)
    conn.set(LEADER_KEY, HOLDER)  # the intake's fence: we hold the channel


def _bare_enqueue(queue: Queue) -> Call:
    """The intake's enqueue alone: the same job, arguments and options, no dedupe or replay."""

    def call(data: dict[str, Any]) -> object:
        event = job_event(DEFAULT_CHANNEL, data)
        return queue.enqueue_call(
            JOB_PATH,
            args=(event,),
            job_id=job_id_for(event["event_uuid"], event["replay_id"]),
            timeout=JOB_TIMEOUT,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            description=job_description(event),
            meta=job_meta(event),
            retry=None,
        )

    return call
