"""/metrics in Prometheus format, read at scrape time from Redis and the database.

Nothing is counted in this process: every number comes from the shared stores the workers and the
subscriber write, so any gunicorn worker answers a scrape with the same values and no
multiprocess directory is needed. The database's numbers come from its counter tables (kept by
triggers, see shared/db.py) and the status index, never from a scan of the history: a scrape
costs the same over a thousand orders as over a million step rows (`make bench`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from flask import Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import Engine, func, select

from healthcheck import probes
from healthcheck.dependencies import Dependencies
from shared import db, keys
from shared.servertime import server_now

PREFIX = "provisioning"
# Step durations in seconds: Salesforce and WHMCS calls take tens of ms to tens of seconds.
BUCKETS = db.STEP_BUCKETS


def install(app: Flask, deps: Dependencies) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(deps))
    app.extensions["metrics_registry"] = registry
    app.add_url_rule("/metrics", "metrics", scrape)


def scrape() -> Response:
    registry: CollectorRegistry = current_app.extensions["metrics_registry"]
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class StoreCollector:
    """A custom collector: queries the stores on each scrape, within the probe budget."""

    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps

    def collect(self) -> Iterator[Metric]:
        settings = self.deps.settings
        results = self.deps.flights.run(
            {
                "metrics-redis": lambda: probes.timed(
                    lambda: redis_state(
                        self.deps.redis,
                        settings.queue_name,
                        settings.events.channel,
                        server_now(self.deps.redis),  # the heartbeat's clock
                    )
                ),
                "metrics-database": lambda: probes.timed(lambda: database_state(self.deps.engine)),
            },
            self.deps.timeout,
        )
        redis_probe, db_probe = results["metrics-redis"], results["metrics-database"]
        up = GaugeMetricFamily(
            f"{PREFIX}_up", "1 when the store answered this scrape.", labels=["store"]
        )
        up.add_metric(["redis"], float(redis_probe.ok))
        up.add_metric(["database"], float(db_probe.ok))
        yield up
        if redis_probe.ok:
            yield from redis_metrics(
                redis_probe.details, settings.queue_name, settings.events.channel
            )
        if db_probe.ok:
            yield from database_metrics(db_probe.details)


def redis_state(conn: Any, queue_name: str, channel: str, now: float) -> dict[str, Any]:
    state = probes.replay_storage(conn, queue_name, channel, now)
    state["inflight"] = conn.hlen(keys.INFLIGHT)
    state["token_mints"] = probes.as_int(conn.get(keys.SF_TOKEN_MINTS)) or 0
    state["reconcile"] = reconcile_state(conn, channel)
    return state


def database_state(engine: Engine) -> dict[str, Any]:
    """Three small reads: the counter tables (a row per outcome, a row per step and outcome) and
    the running attempts through the status index."""
    o, s = db.outcome_counts, db.step_counts
    outcomes = select(o.c.status, o.c.error_code, o.c.count)
    steps = select(
        s.c.step, s.c.outcome, s.c.count, s.c.sum_ms, *(s.c[f"le_{i}"] for i in range(len(BUCKETS)))
    )
    running = select(func.count()).where(db.fulfilments.c.status == "running")
    with engine.connect() as conn:
        return {
            "outcomes": [
                *(tuple(row) for row in conn.execute(outcomes)),
                ("running", "", conn.execute(running).scalar_one()),
            ],
            "steps": [tuple(row) for row in conn.execute(steps)],
        }


def redis_metrics(state: Mapping[str, Any], queue_name: str, channel: str) -> Iterator[Metric]:
    queue, sub = state["queue"], state["subscriber"]
    for name, value, doc in (
        ("queue_depth", queue["depth"], "Jobs waiting in the provisioning queue."),
        ("queue_started_jobs", queue["started"], "Jobs a worker is running now."),
        ("queue_failed_jobs", queue["failed"], "Jobs in the failed registry (dead letters)."),
        ("workers", queue["workers"], "Live RQ workers listening on the queue."),
    ):
        yield _family(GaugeMetricFamily, name, doc, {"queue": queue_name}, value)
    yield _family(
        GaugeMetricFamily, "orders_in_flight", "Orders under a worker lease.", {}, state["inflight"]
    )
    yield _family(
        GaugeMetricFamily,
        "outcomes_waiting",
        "Outcomes Salesforce has not taken yet (prov:outbox).",
        {},
        state["outbox"]["waiting"],
    )
    yield _family(
        GaugeMetricFamily,
        "outcomes_waiting_oldest_age_seconds",
        "Age of the oldest outcome waiting for delivery (0 when none wait).",
        {},
        state["outbox"]["oldest_age_seconds"] or 0.0,
    )
    on_channel = {"channel": channel}
    gauges = {
        "subscriber_active": (float(sub["active"]), "1 while the subscriber's long poll is alive."),
        "subscriber_heartbeat_age_seconds": (sub["heartbeat_age_seconds"], "Since the heartbeat."),
        "subscriber_last_connect_age_seconds": (
            sub["last_connect_age_seconds"],
            "Since the last successful /meta/connect.",
        ),
        "subscriber_last_event_age_seconds": (
            sub["last_event_age_seconds"],
            "Since the last event.",
        ),
        "replay_id": (state["replay"]["replay_id"], "The stored replay id (sf:pe:replay)."),
    }
    for name, (value, doc) in gauges.items():
        if value is not None:  # absent until the subscriber has written it
            yield _family(GaugeMetricFamily, name, doc, on_channel, value)
    counters = {
        "subscriber_replay_fallbacks": (sub["replay_fallbacks"], "Replay ids refused as too old."),
        "subscriber_events_enqueued": (sub["events_enqueued"], "Events the subscriber enqueued."),
    }
    for name, (value, doc) in counters.items():
        yield _family(CounterMetricFamily, name, doc, on_channel, value)
    yield _family(
        CounterMetricFamily,
        "salesforce_token_mints",
        "Salesforce JWT logins.",
        {},
        state["token_mints"],
    )
    yield from reconcile_metrics(state["reconcile"], channel)


def reconcile_state(conn: Any, channel: str) -> dict[str, int]:
    """Dead-lettered events (the subscriber's) and the reconciler's counts."""
    dead = conn.hget(keys.heartbeat_key(channel), "dead_letters")
    total, overdue = conn.hmget(keys.RECONCILER_STATE, "reconciled_total", "overdue")
    return {
        "dead_letters": probes.as_int(dead) or 0,
        "reconciled": probes.as_int(total) or 0,
        "overdue": probes.as_int(overdue) or 0,
    }


def reconcile_metrics(state: Mapping[str, int], channel: str) -> Iterator[Metric]:
    yield _family(
        CounterMetricFamily,
        "subscriber_dead_letters",
        "Events that could not become jobs (sf:pe:dead:<channel>).",
        {"channel": channel},
        state["dead_letters"],
    )
    yield _family(
        CounterMetricFamily,
        "reconciled_orders",
        "Orders Activating with no event or job that the reconciler gave a job.",
        {},
        state["reconciled"],
    )
    yield _family(
        GaugeMetricFamily,
        "orders_activating_overdue",
        "Orders Activating for longer than RECONCILE_AFTER at the last sweep (at most 200).",
        {},
        state["overdue"],
    )


def database_metrics(state: Mapping[str, Any]) -> Iterator[Metric]:
    done = CounterMetricFamily(
        f"{PREFIX}_fulfilments",
        "Finished fulfilment attempts by outcome and Activation_Error_Code__c.",
        labels=["outcome", "error_code"],
    )
    running = 0
    for status, error_code, count in state["outcomes"]:
        if status == "running":
            running += count
        else:
            done.add_metric([status, error_code or ""], count)
    yield done
    yield _family(GaugeMetricFamily, "fulfilments_running", "Attempts still running.", {}, running)
    yield step_histogram(state["steps"])


def step_histogram(rows: list[tuple[Any, ...]]) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(
        f"{PREFIX}_step_duration_seconds",
        "Duration of each fulfilment step, from the step log.",
        labels=["step", "outcome"],
    )
    for step, outcome, count, total_ms, *cumulative in rows:
        buckets = [
            (_le(bound), float(n or 0)) for bound, n in zip(BUCKETS, cumulative, strict=True)
        ]
        buckets.append(("+Inf", float(count)))
        histogram.add_metric([step, outcome], buckets, sum_value=float(total_ms or 0) / 1000)
    return histogram


def _le(bound: float) -> str:
    return repr(float(bound))


def _family(kind: type, name: str, doc: str, labels: dict[str, str], value: float) -> Metric:
    family = kind(f"{PREFIX}_{name}", doc, labels=list(labels))
    family.add_metric(list(labels.values()), float(value))
    return family
