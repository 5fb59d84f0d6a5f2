"""GET /health against real Redis and databases, and real outages of both."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from rq import SimpleWorker, Worker
from rq.job import Job
from sqlalchemy.engine import make_url

from healthcheck import probes
from healthcheck.app import create_app
from shared import keys, outbox
from shared.config import DEFAULT_CHANNEL, load_settings
from shared.queueing import provisioning_queue
from subscriber import intake
from tests.fixtures.infra import TEST_REDIS_URL
from tests.fixtures.outages import TcpGate, free_port

# Not a performance target (bench/ measures those): a generous guard that tells "answered at the
# probe deadline" apart from "waited for a hung dependency".
HANG_GUARD = 10.0


def explode(event: dict | None = None) -> None:
    raise RuntimeError("boom: WHMCS said no")


def settings_for(redis_url: str, database_url: str, **extra: str):
    return load_settings({"REDIS_URL": redis_url, "DATABASE_URL": database_url, **extra})


def app_for(redis_url: str, database_url: str, **extra: str):
    settings = settings_for(redis_url, database_url, **extra)
    return create_app({"SETTINGS": settings, "PROBE_TIMEOUT": 1.0})


def get_health(client) -> tuple[int, dict, float]:
    started = time.monotonic()
    reply = client.get("/health")
    return reply.status_code, reply.get_json(), time.monotonic() - started


def write_heartbeat(conn, now: float, **fields: object) -> None:
    values = {
        "state": "connected",
        "holder": "host:1",
        "updated_at": now,
        "last_connect_at": now - 5,
        "last_event_at": now - 60,
        "last_replay_id": 42,
        "advised_timeout": 110,
        "replay_fallbacks": 1,
        "events_enqueued": 7,
        **fields,
    }
    conn.hset(keys.heartbeat_key(DEFAULT_CHANNEL), mapping={k: str(v) for k, v in values.items()})


# --- the report --------------------------------------------------------------------------------


def test_health_reports_the_pubsub_position_when_the_subscriber_runs_pubsub(
    redis_conn, sqlite_engine, sqlite_url
):
    redis_conn.set(keys.replay_key(DEFAULT_CHANNEL), "42")  # CometD's, not the one in use
    redis_conn.set(keys.pubsub_replay_key(DEFAULT_CHANNEL), (4711).to_bytes(8, "big").hex())
    write_heartbeat(redis_conn, time.time(), transport="pubsub")
    status, body, _ = get_health(app_for(TEST_REDIS_URL, sqlite_url).test_client())
    assert status == 200, body
    assert body["integrations"]["redis"]["replay"] == {
        "channel": DEFAULT_CHANNEL,
        "transport": "pubsub",
        "replay_id": 4711,
        "replay_id_bytes": "0000000000001267",
    }


def test_health_reports_stores_queue_replay_and_subscriber(redis_conn, sqlite_engine, sqlite_url):
    queue = provisioning_queue(redis_conn, "provisioning", 60)
    queue.enqueue("tests.healthcheck.test_health.explode", job_id="evt-failing")
    SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)
    for n in range(2):
        queue.enqueue("worker.jobs.provision_order", {"order_id": f"801{n}"}, job_id=f"evt-{n}")
    live = Worker([queue], connection=redis_conn, name="live-worker")
    live.register_birth()
    # A worker killed -9 leaves its registration behind but its key expires: not live.
    redis_conn.sadd(f"rq:workers:{queue.name}", "rq:worker:dead-worker")
    redis_conn.set(keys.replay_key(DEFAULT_CHANNEL), "42")
    write_heartbeat(redis_conn, time.time())

    app = app_for(TEST_REDIS_URL, sqlite_url, APP_ENV="staging")
    status, body, _ = get_health(app.test_client())

    assert status == 200, body
    assert body["status"] == "ok" and body["warnings"] == []
    assert body["environment"] == "staging"
    assert body["version"]
    assert body["database"]["status"] == "connected" and body["database"]["schema_current"]
    assert body["redis"]["status"] == "connected"
    assert body["redis"]["latency_ms"] >= 0
    integration = body["integrations"]["redis"]
    assert integration["queue"] == {
        "name": "provisioning",
        "depth": 2,
        "started": 0,
        "failed": 1,
        "workers": 1,
    }
    assert integration["replay"] == {
        "channel": DEFAULT_CHANNEL,
        "transport": "cometd",
        "replay_id": 42,
    }
    subscriber = integration["subscriber"]
    assert subscriber["active"] is True
    assert subscriber["state"] == "connected"
    assert 4 <= subscriber["last_connect_age_seconds"] < 60
    assert 59 <= subscriber["last_event_age_seconds"] < 120
    assert subscriber["replay_fallbacks"] == 1
    # The probe must not have run RQ's abandoned-job cleanup (cleanup=False everywhere).
    assert Job.fetch("evt-failing", connection=redis_conn).get_status() == "failed"


def test_stalled_subscriber_and_no_workers_degrade_but_answer_200(
    redis_conn, sqlite_engine, sqlite_url
):
    write_heartbeat(redis_conn, time.time(), last_connect_at=time.time() - 900)
    status, body, _ = get_health(app_for(TEST_REDIS_URL, sqlite_url).test_client())

    assert status == 200
    assert body["status"] == "degraded"
    assert body["integrations"]["redis"]["subscriber"]["active"] is False
    assert "no live worker on the queue" in body["warnings"]
    assert any("subscriber not active" in w for w in body["warnings"])


def test_outcomes_waiting_for_delivery_are_counted_with_the_oldest_age(
    redis_conn, sqlite_engine, sqlite_url
):
    now = time.time()
    outbox.put(redis_conn, "8015g00000ABCDEAAA", outbox.first("Failed", now - 120, "SF_AUTH"))
    outbox.put(redis_conn, "8015g00000ABCDFAAA", outbox.first("Activated", now - 5, "503"))

    status, body, _ = get_health(app_for(TEST_REDIS_URL, sqlite_url).test_client())

    assert status == 200
    waiting = body["integrations"]["redis"]["outbox"]
    assert waiting["waiting"] == 2 and 120 <= waiting["oldest_age_seconds"] < 600
    assert any("2 outcome(s) wait for delivery to Salesforce" in w for w in body["warnings"])


def test_unmigrated_database_is_a_warning(redis_conn, tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    status, body, _ = get_health(app_for(TEST_REDIS_URL, url).test_client())
    assert status == 200
    assert body["database"]["schema_version"] is None
    assert any("provisioner db upgrade" in w for w in body["warnings"])


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("heartbeat", "active"),
    [
        ({}, False),
        ({"state": "connected", "last_connect_at": str(NOW - 5)}, True),
        ({"state": "connected", "last_connect_at": str(NOW - 142)}, True),  # 110 s poll + slack
        ({"state": "connected", "last_connect_at": str(NOW - 143)}, False),
        ({"state": "connected", "last_connect_at": str(NOW - 6), "advised_timeout": "1"}, True),
        ({"state": "connected", "last_connect_at": str(NOW - 50), "advised_timeout": "10"}, False),
        ({"state": "connected"}, False),
        ({"state": "backoff", "last_connect_at": str(NOW - 5)}, False),
        ({"state": "disabled", "last_connect_at": str(NOW - 5)}, False),
        ({"state": "connected", "last_connect_at": "garbage"}, False),
    ],
)
def test_subscriber_is_active_only_while_its_long_poll_answers(heartbeat, active):
    assert probes.is_active(heartbeat, NOW) is active


def test_a_stuck_probe_is_joined_not_repeated_until_abandoned():
    release, calls, clock = threading.Event(), [], [0.0]

    def stuck() -> probes.Probe:
        calls.append(1)
        release.wait(30)
        return probes.Probe("connected", 0.0)

    flights = probes.Flights(abandon_after=10, clock=lambda: clock[0])
    try:
        assert flights.run({"db": stuck}, 0.05)["db"].status == "timeout"
        assert flights.run({"db": stuck}, 0.05)["db"].status == "timeout"
        assert len(calls) == 1  # the second request waited on the first flight
        clock[0] = 11.0
        assert flights.run({"db": stuck}, 0.05)["db"].status == "timeout"
        assert len(calls) == 2  # the first was abandoned to its thread
    finally:
        release.set()
    assert flights.run({"db": lambda: probes.Probe("connected", 1.0)}, 5)["db"].ok


# --- rq-dashboard --------------------------------------------------------------------------------

DASHBOARD = {"RQ_DASHBOARD_ENABLED": "true", "RQ_DASHBOARD_USERNAME": "ops"}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {**DASHBOARD},  # enabled without a password: refused
        {**DASHBOARD, "RQ_DASHBOARD_USERNAME": "", "RQ_DASHBOARD_PASSWORD": "pw"},
        {"RQ_DASHBOARD_USERNAME": "ops", "RQ_DASHBOARD_PASSWORD": "pw"},  # not enabled
    ],
)
def test_dashboard_is_not_mounted_unless_enabled_with_credentials(redis_conn, sqlite_url, extra):
    client = app_for(TEST_REDIS_URL, sqlite_url, **extra).test_client()
    assert client.get("/rq/").status_code == 404
    assert client.get("/rq/0/data/queues.json").status_code == 404


def test_dashboard_needs_basic_auth_and_shows_a_failed_order_job(
    redis_conn, sqlite_engine, sqlite_url
):
    order_id = "8015g00000ABCDEAAA"
    queue = provisioning_queue(redis_conn, "provisioning", 60)
    event = {
        "order_id": order_id,
        "event_uuid": "e-1",
        "replay_id": 9,
        "published_at": "2026-04-09T18:31:40.517Z",
        "channel": DEFAULT_CHANNEL,
    }
    # Described and tagged as the subscriber does; only the function is one that fails for sure.
    queue.enqueue_call(
        "tests.healthcheck.test_health.explode",
        args=(event,),
        job_id="evt-e-1",
        description=intake.job_description(event),
        meta=intake.job_meta(event),
    )
    SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)
    app = app_for(TEST_REDIS_URL, sqlite_url, **DASHBOARD, RQ_DASHBOARD_PASSWORD="s3cret-pw")
    client = app.test_client()
    failed_list = "/rq/0/data/jobs/provisioning/failed/8/asc/1.json"

    for auth in (None, ("ops", "wrong"), ("intruder", "s3cret-pw")):
        for path in (
            "/rq/",
            failed_list,
            "/rq/0/data/job/evt-e-1.json",
            "/rq/requeue/provisioning",
        ):
            reply = client.get(path, auth=auth)
            assert reply.status_code == 401, (path, auth)
            assert "Basic" in reply.headers["WWW-Authenticate"]
    assert client.get("/health").status_code == 200  # health stays open

    auth = ("ops", "s3cret-pw")
    assert client.get("/rq/", auth=auth).status_code == 200
    jobs = client.get(failed_list, auth=auth).get_json()["jobs"]
    assert [job["id"] for job in jobs] == ["evt-e-1"]
    assert order_id in jobs[0]["description"]
    assert "boom: WHMCS said no" in jobs[0]["exc_info"]
    # JSON mode: the job page reads our JSON-serialized job (pickle mode would 500 here).
    job = client.get("/rq/0/data/job/evt-e-1.json", auth=auth).get_json()
    assert job["status"] == "failed"
    assert json.loads(job["metadata"])["order_id"] == order_id
    assert "Traceback" in job["exc_info"]


# --- outages -----------------------------------------------------------------------------------


def test_redis_stopped_answers_503_within_the_bound_then_200_after_restart(
    own_redis, sqlite_engine, sqlite_url
):
    client = app_for(own_redis.url, sqlite_url).test_client()
    assert get_health(client)[0] == 200

    own_redis.stop()
    status, body, elapsed = get_health(client)
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["redis"]["status"] in ("error", "timeout")
    assert body["integrations"]["redis"]["status"] in ("error", "timeout")
    assert body["database"]["status"] == "connected"
    assert elapsed < HANG_GUARD

    own_redis.start()
    assert get_health(client)[0] == 200


def test_redis_hanging_answers_503_at_the_deadline_then_200_when_it_wakes(
    own_redis, sqlite_engine, sqlite_url
):
    client = app_for(own_redis.url, sqlite_url).test_client()
    assert get_health(client)[0] == 200

    own_redis.pause()
    try:
        status, body, elapsed = get_health(client)
    finally:
        own_redis.resume()
    assert status == 503
    assert body["redis"]["status"] in ("timeout", "error")
    assert elapsed < HANG_GUARD

    deadline = time.monotonic() + 30
    while get_health(client)[0] != 200:
        assert time.monotonic() < deadline, "health did not recover after Redis resumed"
        time.sleep(0.2)


@pytest.mark.postgres
def test_database_unreachable_answers_503_within_the_bound_then_200(
    redis_conn, postgres_engine, postgres_url
):
    real = make_url(postgres_url)
    gate = TcpGate(real.host or "127.0.0.1", real.port or 5432)
    try:
        # Trust auth ignores the password, which lets the test prove it never reaches the reply.
        gated = real.set(host="127.0.0.1", port=gate.port, password="sekrit-pw")
        url = gated.render_as_string(hide_password=False)
        client = app_for(TEST_REDIS_URL, url).test_client()
        status, body, _ = get_health(client)
        assert status == 200, body
        assert body["database"]["backend"] == "postgresql"

        gate.open = False  # firewalled: connections accepted, never answered
        status, body, elapsed = get_health(client)
        assert status == 503
        assert body["database"]["status"] == "timeout"
        assert body["redis"]["status"] == "connected"
        assert elapsed < HANG_GUARD

        gate.open = True
        deadline = time.monotonic() + 30
        while (reply := get_health(client))[0] != 200:
            assert time.monotonic() < deadline, reply
            time.sleep(0.2)
        assert "sekrit-pw" not in json.dumps(reply[1])
    finally:
        gate.close()


def test_database_refusing_connections_answers_503(redis_conn):
    url = f"postgresql+psycopg://postgres:pw@127.0.0.1:{free_port()}/nowhere"
    status, body, _ = get_health(app_for(TEST_REDIS_URL, url).test_client())
    assert status == 503
    assert body["database"]["status"] == "error"
    assert "pw@" not in json.dumps(body)


# --- served for real ----------------------------------------------------------------------------


def test_python_dash_m_healthcheck_serves_health(services, redis_conn, sqlite_engine, sqlite_url):
    port = free_port()
    env = {"REDIS_URL": TEST_REDIS_URL, "DATABASE_URL": sqlite_url, "APP_ENV": "ci"}
    service = services.start("healthcheck", env, "--port", str(port))
    service.wait_for_message("Health app listening")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
        body = json.load(reply)
    assert body["environment"] == "ci"
    assert body["database"]["status"] == "connected"
    assert service.stop() == 0
