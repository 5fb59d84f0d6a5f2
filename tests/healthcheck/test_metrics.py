"""/metrics: Prometheus text that prometheus-client parses, values read from the shared stores."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq import SimpleWorker, Worker

from healthcheck.app import create_app
from shared import db, keys, outbox
from shared.config import DEFAULT_CHANNEL, load_settings
from shared.queueing import provisioning_queue
from tests.fixtures.infra import TEST_REDIS_URL
from tests.fixtures.outages import RedisServer, free_port

ORDER = "8015g00000ABCDEAAA"


def fail(event: dict) -> None:
    raise RuntimeError("no")


def scrape_text(client) -> str:
    reply = client.get("/metrics")
    assert reply.status_code == 200
    assert reply.content_type.startswith("text/plain")
    return reply.get_data(as_text=True)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels), through prometheus-client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def record(engine, status: str, error_code: str = "", steps=()) -> None:
    with engine.begin() as conn:
        fid = conn.execute(
            db.fulfilments.insert().values(
                sf_order_id=ORDER, status=status, error_code=error_code, job_id="evt-x"
            )
        ).inserted_primary_key[0]
        for step, outcome, ms in steps:
            conn.execute(
                db.fulfilment_steps.insert().values(
                    fulfilment_id=fid, step=step, outcome=outcome, duration_ms=ms
                )
            )


def fill_stores(redis_conn, engine) -> None:
    queue = provisioning_queue(redis_conn, "provisioning", 60)
    queue.enqueue("tests.healthcheck.test_metrics.fail", {"order_id": ORDER}, job_id="evt-f")
    SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)
    for n in range(3):
        queue.enqueue("worker.jobs.provision_order", {"order_id": ORDER}, job_id=f"evt-{n}")
    Worker([queue], connection=redis_conn, name="w1").register_birth()
    now = time.time()
    redis_conn.hset(
        keys.heartbeat_key(DEFAULT_CHANNEL),
        mapping={
            "state": "connected",
            "updated_at": str(now - 3),
            "last_connect_at": str(now - 20),
            "last_event_at": str(now - 100),
            "replay_fallbacks": "2",
            "events_enqueued": "5",
        },
    )
    redis_conn.set(keys.replay_key(DEFAULT_CHANNEL), "77")
    redis_conn.hset(keys.INFLIGHT, ORDER, "{}")
    record(engine, "activated", steps=[("whmcs_create", "ok", 40.0), ("whmcs_accept", "ok", 300)])
    record(engine, "activated", steps=[("whmcs_create", "ok", 3000.0)])
    record(engine, "failed", "409", steps=[("whmcs_create", "failed", 20.0)])
    record(engine, "failed", "409")
    record(engine, "failed", "ETIMEOUT")
    record(engine, "running")


def test_metrics_parse_and_report_queue_subscriber_and_fulfilments(redis_conn, any_engine):
    fill_stores(redis_conn, any_engine)
    url = any_engine.url.render_as_string(hide_password=False)
    settings = load_settings({"REDIS_URL": TEST_REDIS_URL, "DATABASE_URL": url})
    found = samples(scrape_text(create_app({"SETTINGS": settings}).test_client()))

    assert value(found, "provisioning_up", store="redis") == 1
    assert value(found, "provisioning_up", store="database") == 1
    assert value(found, "provisioning_queue_depth", queue="provisioning") == 3
    assert value(found, "provisioning_queue_failed_jobs", queue="provisioning") == 1
    assert value(found, "provisioning_queue_started_jobs", queue="provisioning") == 0
    assert value(found, "provisioning_workers", queue="provisioning") == 1
    assert value(found, "provisioning_orders_in_flight") == 1
    on = {"channel": DEFAULT_CHANNEL}
    assert value(found, "provisioning_subscriber_active", **on) == 1
    assert 19 <= value(found, "provisioning_subscriber_last_connect_age_seconds", **on) < 80
    assert 99 <= value(found, "provisioning_subscriber_last_event_age_seconds", **on) < 160
    assert 2 <= value(found, "provisioning_subscriber_heartbeat_age_seconds", **on) < 60
    assert value(found, "provisioning_subscriber_replay_fallbacks_total", **on) == 2
    assert value(found, "provisioning_subscriber_events_enqueued_total", **on) == 5
    assert value(found, "provisioning_replay_id", **on) == 77

    assert value(found, "provisioning_fulfilments_total", outcome="activated", error_code="") == 2
    assert value(found, "provisioning_fulfilments_total", outcome="failed", error_code="409") == 2
    assert (
        value(found, "provisioning_fulfilments_total", outcome="failed", error_code="ETIMEOUT") == 1
    )
    assert value(found, "provisioning_fulfilments_running") == 1

    create = {"step": "whmcs_create", "outcome": "ok"}
    assert value(found, "provisioning_step_duration_seconds_count", **create) == 2
    assert value(found, "provisioning_step_duration_seconds_sum", **create) == pytest.approx(3.04)
    assert value(found, "provisioning_step_duration_seconds_bucket", **create, le="0.05") == 1
    assert value(found, "provisioning_step_duration_seconds_bucket", **create, le="2.5") == 1
    assert value(found, "provisioning_step_duration_seconds_bucket", **create, le="5.0") == 2
    assert value(found, "provisioning_step_duration_seconds_bucket", **create, le="+Inf") == 2
    accept = {"step": "whmcs_accept", "outcome": "ok"}
    assert value(found, "provisioning_step_duration_seconds_bucket", **accept, le="0.25") == 0
    assert value(found, "provisioning_step_duration_seconds_bucket", **accept, le="0.5") == 1


def test_metrics_count_outcomes_waiting_for_delivery(redis_conn, sqlite_engine, sqlite_url):
    settings = load_settings({"REDIS_URL": TEST_REDIS_URL, "DATABASE_URL": sqlite_url})
    client = create_app({"SETTINGS": settings}).test_client()
    found = samples(scrape_text(client))
    assert value(found, "provisioning_outcomes_waiting") == 0
    assert value(found, "provisioning_outcomes_waiting_oldest_age_seconds") == 0

    outbox.put(redis_conn, ORDER, outbox.first("Failed", time.time() - 300, "403"))
    found = samples(scrape_text(client))

    assert value(found, "provisioning_outcomes_waiting") == 1
    assert 300 <= value(found, "provisioning_outcomes_waiting_oldest_age_seconds") < 900


def test_metrics_still_parse_when_redis_is_stopped(tmp_path, sqlite_engine, sqlite_url):
    server = RedisServer(tmp_path)
    server.start()
    settings = load_settings({"REDIS_URL": server.url, "DATABASE_URL": sqlite_url})
    client = create_app({"SETTINGS": settings, "PROBE_TIMEOUT": 1.0}).test_client()
    try:
        server.stop()
        found = samples(scrape_text(client))
    finally:
        server.stop()
    assert value(found, "provisioning_up", store="redis") == 0
    assert value(found, "provisioning_up", store="database") == 1
    assert value(found, "provisioning_fulfilments_running") == 0
    assert not any(name == "provisioning_queue_depth" for name, _ in found)


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
def test_every_gunicorn_worker_reports_the_same_shared_numbers(
    services, redis_conn, sqlite_engine, sqlite_url
):
    fill_stores(redis_conn, sqlite_engine)
    port = free_port()
    env = {"REDIS_URL": TEST_REDIS_URL, "DATABASE_URL": sqlite_url}
    services.start(
        "gunicorn",
        env,
        *("--workers", "3", "--bind", f"127.0.0.1:{port}", "healthcheck.app:create_app()"),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            status, _ = fetch(f"{base}/health")
            break
        except OSError:
            assert time.monotonic() < deadline, "gunicorn did not come up"
            time.sleep(0.1)
    assert status == 200

    def counts() -> tuple[float, ...]:
        found = samples(fetch(f"{base}/metrics")[1])
        return (
            value(found, "provisioning_queue_depth", queue="provisioning"),
            value(found, "provisioning_fulfilments_total", outcome="failed", error_code="409"),
            value(
                found, "provisioning_step_duration_seconds_count", step="whmcs_create", outcome="ok"
            ),
        )

    assert {counts() for _ in range(12)} == {(3.0, 2.0, 2.0)}
    # A change written by another process shows up in every worker's next scrape.
    record(sqlite_engine, "failed", "409", steps=[("whmcs_create", "ok", 10.0)])
    assert {counts() for _ in range(12)} == {(3.0, 3.0, 3.0)}


def test_metrics_count_dead_letters_and_reconciled_orders(redis_conn, sqlite_engine):
    redis_conn.hset(keys.heartbeat_key(DEFAULT_CHANNEL), "dead_letters", "4")
    redis_conn.hset(keys.RECONCILER_STATE, mapping={"reconciled_total": "7", "overdue": "2"})
    url = sqlite_engine.url.render_as_string(hide_password=False)
    settings = load_settings({"REDIS_URL": TEST_REDIS_URL, "DATABASE_URL": url})
    found = samples(scrape_text(create_app({"SETTINGS": settings}).test_client()))
    on = {"channel": DEFAULT_CHANNEL}
    assert value(found, "provisioning_subscriber_dead_letters_total", **on) == 4
    assert value(found, "provisioning_reconciled_orders_total") == 7
    assert value(found, "provisioning_orders_activating_overdue") == 2
