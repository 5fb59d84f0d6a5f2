"""Redis as ops run it, with real servers: TLS with a private CA and an ACL user whose password
needs escaping, and Sentinel with a real failover. The processes (subscriber, worker, health app,
provisioner CLI) reach it through shared.connections alone."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis

from healthcheck.app import create_app
from healthcheck.dashboard import standalone_app
from sandbox.fixtures import standard_document
from sandbox.http_server import wait_until
from shared.config import load_settings
from shared.connections import redis_client
from shared.errors import ConfigError
from shared.queueing import provisioning_queue
from tests.fixtures.redis_topologies import ACL_PASSWORD, ACL_USER

pytestmark = pytest.mark.slow

SUBSCRIBED = "Subscribed to platform event channel"


def settings_for(env: dict[str, str]):
    return load_settings({"DATABASE_URL": "sqlite:///unused.db", **env})


# --- TLS and ACL ---------------------------------------------------------------------------------


def test_a_tls_redis_with_an_acl_user_answers_through_the_factory(tls_redis):
    conn = redis_client(settings_for(tls_redis.env()).redis)
    conn.set("probe", "1")
    assert conn.get("probe") == b"1"
    assert conn.acl_whoami() == ACL_USER


def test_tls_is_verified_and_the_password_checked(tls_redis):
    without_ca = {**tls_redis.env(), "REDIS_CA_BUNDLE": ""}  # the system store knows no such CA
    with pytest.raises(redis.ConnectionError):
        redis_client(settings_for(without_ca).redis).ping()
    wrong = tls_redis.url.replace("p%40ss", "p%40sx")
    with pytest.raises(redis.AuthenticationError):
        redis_client(settings_for({**tls_redis.env(), "REDIS_URL": wrong}).redis).ping()


def test_the_password_is_a_secret_in_both_spellings(tls_redis):
    secrets = settings_for(tls_redis.env()).secrets()
    assert ACL_PASSWORD in secrets
    assert tls_redis.url.split(":")[2].split("@")[0] in secrets  # percent-encoded


def test_the_health_app_and_the_cli_reach_a_tls_redis(tls_redis, tmp_path):
    env = {**tls_redis.env(), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    app = create_app({"SETTINGS": load_settings(env, needs=("dashboard",))})
    body = app.test_client().get("/health").get_json()
    assert body["redis"]["status"] == "connected", body
    shown = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "replay", "show"],
        env={"PATH": "/usr/bin:/bin", **env, "SF_EVENTS_ENABLED": "false"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert ACL_PASSWORD not in shown.stdout + shown.stderr


def test_subscriber_and_worker_fulfil_an_order_over_tls_with_acl(
    tls_redis, app_env, sandbox_admin, services
):
    env = {**app_env, **tls_redis.env()}
    subscriber = services.start("subscriber", env)
    worker = services.start("worker", env)
    subscriber.wait_for_message(SUBSCRIBED, timeout=30)
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    sandbox_admin.approve(order_id)
    assert wait_until(
        lambda: sandbox_admin.order(order_id)["Activation_Status__c"] == "Activated", timeout=60
    ), worker.text()[-3000:]
    conn = redis_client(settings_for(tls_redis.env()).redis)
    assert conn.exists("rq:queue:provisioning") == 0
    for service in (subscriber, worker):
        text = service.text()
        assert ACL_PASSWORD not in text
        assert tls_redis.url not in text


# --- Sentinel ------------------------------------------------------------------------------------


@pytest.mark.parametrize("topology", ["sentinels", "tls_sentinels"])
def test_a_sentinel_client_finds_the_primary_and_follows_a_failover(topology, request):
    sentinels = request.getfixturevalue(topology)
    conn = redis_client(settings_for(sentinels.env()).redis)
    conn.set("before", "1")
    assert wait_until(lambda: _replicated(sentinels, b"before"), timeout=10)
    killed = sentinels.kill_primary()
    started = time.monotonic()
    assert wait_until(lambda: _writes(conn), timeout=60)
    recovered = time.monotonic() - started
    assert sentinels.primary_port() not in (None, killed)
    assert conn.get("before") == b"1"  # it was on the replica before the kill
    print(f"{topology} failover: writes resumed {recovered:.1f}s after kill -9 of the primary")


def _writes(conn: redis.Redis) -> bool:
    try:
        conn.set("after", "1")
        return True
    except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
        return False


def _replicated(sentinels, key: bytes) -> bool:
    primary = sentinels.primary_port()
    for server in sentinels.servers:
        if server.port != primary and sentinels.client(server.port).exists(key):
            return True
    return False


# --- rq-dashboard, standalone (compose's rq-dashboard service) ------------------------------------


@pytest.mark.parametrize("topology", ["tls_redis", "sentinels"])
def test_the_standalone_dashboard_reads_the_queue_through_the_factory(
    topology, request, monkeypatch
):
    env = request.getfixturevalue(topology).env()
    for name, value in {
        **env,
        "RQ_DASHBOARD_USERNAME": "ops",
        "RQ_DASHBOARD_PASSWORD": "dash-pw",
        "LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(name, value)
    conn = redis_client(settings_for(env).redis)
    queue = provisioning_queue(conn, "provisioning", 60)
    queue.enqueue_call("worker.jobs.provision", args=({"order_id": "x"},), job_id="evt-dash")

    app = standalone_app()
    client = app.test_client()
    assert client.get("/").status_code == 302
    assert client.get("/rq/0/data/queues.json").status_code == 401
    reply = client.get("/rq/0/data/queues.json", auth=("ops", "dash-pw"))
    counts = {q["name"]: q["count"] for q in reply.get_json()["queues"]}
    assert counts["provisioning"] == 1
    shown = str(app.config["RQ_DASHBOARD_REDIS_URL"])
    assert ACL_PASSWORD not in shown and "%40" not in shown


# --- the settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REDIS_SENTINELS": "10.0.0.5:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINELS": "10.0.0.5", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "a:1,b:99999", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_URL": "rediss://h/0", "REDIS_CA_BUNDLE": "/nowhere/ca.pem"}, "REDIS_CA_BUNDLE"),
        ({"REDIS_URL": "http://h/0"}, "REDIS_URL"),
    ],
)
def test_bad_redis_settings_are_named(env, named):
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert named in str(caught.value)


def test_sentinels_parse_with_ipv6_and_spaces():
    settings = load_settings(
        {"REDIS_SENTINELS": "[::1]:26379, 10.0.0.6:26380", "REDIS_SENTINEL_MASTER": "m"}
    )
    assert settings.redis.sentinels == (("::1", 26379), ("10.0.0.6", 26380))
    assert settings.redis.sentinel_master == "m"
