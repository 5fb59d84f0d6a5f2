"""`provisioner doctor`: each check fails when its fault is set up in the sandbox, else passes."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from rq import SimpleWorker

from provisioner.doctor import checks, order_checks
from provisioner.doctor.checklist import Context, Verdict, run_checks
from sandbox.fixtures import standard_document
from shared import keys, outbox, whmcs
from shared.config import DEFAULT_CHANNEL, load_settings
from shared.queueing import JOB_PATH, provisioning_queue
from subscriber import intake
from subscriber.heartbeat import Heartbeat
from tests.fixtures.outages import free_port
from worker import jobs

ALL = [check.name for check in checks.CHECKS]
CHECK = {check.name: check for check in checks.CHECKS}


@pytest.fixture
def world(sandbox_admin) -> dict:
    return sandbox_admin.load(standard_document(orders=2))


def beat(redis_conn, *, ago: float = 0.0, advised: float = 1.0) -> Heartbeat:
    """The subscriber's own heartbeat writer, as of `ago` seconds in the past."""
    heartbeat = Heartbeat(redis_conn, DEFAULT_CHANNEL, "host:42", clock=lambda: time.time() - ago)
    heartbeat.connected(advised_timeout=advised)
    # ...and a recent reconciler sweep, as a running worker would have left.
    redis_conn.hset(keys.RECONCILER_STATE, mapping={"last_sweep_at": time.time(), "overdue": 0})
    return heartbeat


@pytest.fixture
def healthy(world, redis_conn) -> dict:
    """A world the doctor should pass: fixtures loaded, a live subscriber heartbeat, a recent
    reconciler sweep."""
    beat(redis_conn)
    return world


def diagnose(settings, lines=checks.CHECKS) -> dict[str, Verdict]:
    ctx = Context(settings, problems={})
    try:
        return {r.name: r for r in run_checks(ctx, lines)}
    finally:
        ctx.close()


def failures(results: dict[str, Verdict]) -> dict[str, str]:
    return {name: r.detail for name, r in results.items() if not r.ok}


def test_every_check_passes_on_a_healthy_sandbox(app_settings, healthy):
    results = diagnose(app_settings)
    assert failures(results) == {}
    assert list(results) == ALL
    assert "all 2 active products" in results["product mapping"].detail
    assert "AcceptOrder" in results["whmcs api role"].detail


# --- dead letters and the reconciler --------------------------------------------------------------


def test_a_dead_lettered_event_fails_its_check_with_what_ops_need(
    app_settings, healthy, redis_conn
):
    queue = provisioning_queue(redis_conn, app_settings.queue_name, 60)
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    data = {"event": {"replayId": 77, "EventUuid": "u-77"}, "payload": {"CreatedDate": nested}}
    assert (
        intake.Intake(redis_conn, queue, DEFAULT_CHANNEL, job_timeout=60).accept(data).dead_letter
    )
    results = diagnose(app_settings, [CHECK["redis"], CHECK["dead-lettered events"]])
    detail = failures(results)["dead-lettered events"]
    assert "1 events could not become jobs" in detail and "replay id 77" in detail
    assert "RecursionError" in detail
    assert "sf:pe:dead:" in results["dead-lettered events"].fix


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("state", "ok", "fragment"),
    [
        ({}, False, "no reconciler sweep recorded"),
        ({"last_sweep_at": str(NOW - 1000)}, False, "no reconciler sweep since 17 min ago"),
        ({"last_sweep_at": str(NOW - 30), "overdue": "0"}, True, "no order Activating"),
        (
            {
                "last_sweep_at": str(NOW - 30),
                "overdue": "3",
                "oldest_activating_since": str(NOW - 7200),
            },
            False,
            "3 orders Activating for longer than RECONCILE_AFTER=300 s; "
            "the oldest last modified 2.0 h",
        ),
        (
            {"last_sweep_at": str(NOW - 30), "overdue": "200", "truncated": "1"},
            False,
            "200 or more orders",
        ),
    ],
)
def test_reconciler_verdict(state, ok, fragment):
    verdict = checks.reconciler_verdict(state, NOW, 60, 300)
    assert verdict.ok is ok and fragment in verdict.detail


# --- Salesforce faults ----------------------------------------------------------------------------


def test_revoked_connected_app_fails_the_jwt_login_with_the_runbook_fix(
    app_settings, healthy, sandbox_admin
):
    sandbox_admin.set_app(approved=False)
    results = diagnose(app_settings)
    login = results["salesforce login (JWT)"]
    assert not login.ok
    assert "Salesforce status not updated" in login.fix
    assert "connected app" in login.fix
    # Everything that needs a Salesforce session is reported as not checked, not as passed.
    for name in ("event channel subscribable", "order fields updateable", "product mapping"):
        assert not results[name].ok
        assert results[name].detail == "not checked: salesforce login (JWT)"
    # Checks that do not need Salesforce still run and pass.
    assert results["redis"].ok and results["database"].ok and results["whmcs credentials"].ok


def test_field_without_edit_access_fails_order_fields(app_settings, healthy, sandbox_admin):
    sandbox_admin.set_field_access("WHMCS_Order_ID__c", updateable=False)
    results = diagnose(app_settings)
    fields = results["order fields updateable"]
    assert not fields.ok
    assert "Order.WHMCS_Order_ID__c is read-only" in fields.detail
    assert "Activation_Status__c" not in fields.detail
    assert "Salesforce status not updated" in fields.fix
    assert set(failures(results)) == {"order fields updateable"}


def test_refused_subscription_fails_the_event_channel(app_settings, healthy, sandbox_admin):
    sandbox_admin.add_fault("cometd.handshake", "unknown_client")
    results = diagnose(app_settings)
    channel = results["event channel subscribable"]
    assert not channel.ok
    assert "handshake refused" in channel.detail
    assert "No events received" in channel.fix


def test_cometd_answering_http_errors_fails_the_event_channel(app_settings, healthy, sandbox_admin):
    sandbox_admin.add_fault("cometd.subscribe", "status", status=503)
    channel = diagnose(app_settings)["event channel subscribable"]
    assert not channel.ok
    assert "CometD endpoint failed" in channel.detail and "HTTP 503" in channel.detail
    assert "No events received" in channel.fix


def test_events_disabled_fails_with_the_runbook_fix(app_env, healthy):
    env = {**app_env, "SF_EVENTS_ENABLED": "false"}
    settings = load_settings(env, needs={"salesforce", "events", "orders", "whmcs"})
    result = diagnose(settings)["events enabled"]
    assert not result.ok
    assert "SF_EVENTS_ENABLED=true" in result.fix


# --- WHMCS faults ---------------------------------------------------------------------------------


def test_wrong_whmcs_secret_fails_credentials_and_sends_nothing_more(
    app_env, healthy, sandbox_admin
):
    env = {**app_env, "WHMCS_API_SECRET": "not-the-secret"}
    settings = load_settings(env, needs={"salesforce", "events", "orders", "whmcs"})
    results = diagnose(settings)
    creds = results["whmcs credentials"]
    assert not creds.ok
    assert "Authentication Failed" in creds.detail
    assert "WHMCS_API_SECRET" in creds.fix and "ban" in creds.fix
    assert results["whmcs api role"].detail == "not checked: whmcs credentials"
    assert results["product mapping"].detail == "not checked: whmcs credentials"
    # One refused login, not one per action: three would ban this IP in a real WHMCS.
    assert len(sandbox_admin.whmcs_requests()["requests"]) == 1
    assert "not-the-secret" not in json.dumps([r.__dict__ for r in results.values()])


def test_role_without_accept_order_fails_the_role_check(app_settings, healthy, sandbox_admin):
    allowed = [a for a in checks.ROLE_PROBES if a != "AcceptOrder"]
    sandbox_admin.set_role(allowed)
    results = diagnose(app_settings)
    role = results["whmcs api role"]
    assert not role.ok
    assert role.detail == "the API role does not allow AcceptOrder"
    assert "API Roles" in role.fix
    assert set(failures(results)) == {"whmcs api role"}
    # The probes changed nothing in WHMCS.
    assert sandbox_admin.whmcs_orders()["orders"] == []


def test_role_probes_cover_every_action_the_client_sends():
    sent = set(re.findall(r'self\.call\(\s*"(\w+)"', inspect.getsource(whmcs.WhmcsClient)))
    assert sent == set(checks.ROLE_PROBES)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"WH_Product_ID__c": None}, "UNMAPPED_PRODUCT"),
        ({"Billing_Cycle__c": None}, "INVALID_BILLING_CYCLE"),
        ({"Billing_Cycle__c": "Quarterly"}, "not priced"),
        ({"WH_Product_ID__c": 99}, "UNKNOWN_WHMCS_PRODUCT"),
    ],
)
def test_unmapped_product_fails_product_mapping(
    app_settings, redis_conn, sandbox_admin, change, expected
):
    document = standard_document()
    document["salesforce"]["products"][1].update(change)  # Static IP
    sandbox_admin.load(document)
    beat(redis_conn)
    results = diagnose(app_settings)
    result = results["product mapping"]
    assert not result.ok
    assert result.detail.startswith("1 of 2 active products")
    assert "Static IP (IP-1)" in result.detail and expected in result.detail
    assert "Fibre" not in result.detail
    assert "WH_Product_ID__c and Billing_Cycle__c" in result.fix
    assert set(failures(results)) == {"product mapping"}


def test_inactive_products_are_not_checked(app_settings, redis_conn, sandbox_admin):
    document = standard_document()
    document["salesforce"]["products"][1].update({"WH_Product_ID__c": None, "IsActive": False})
    sandbox_admin.load(document)
    beat(redis_conn)
    assert diagnose(app_settings)["product mapping"].ok


# --- the subscriber -------------------------------------------------------------------------------


def test_stalled_subscriber_fails_the_heartbeat(app_settings, healthy, redis_conn):
    beat(redis_conn, ago=60)  # its last successful /meta/connect was a minute ago
    results = diagnose(app_settings)
    result = results["subscriber heartbeat"]
    assert not result.ok
    assert "subscriber stalled" in result.detail
    assert "No events received" in result.fix
    assert set(failures(results)) == {"subscriber heartbeat"}


def wait_for_heartbeat(settings, ok: bool, timeout: float = 30.0) -> Verdict:
    deadline = time.monotonic() + timeout
    while True:
        result = diagnose(settings, [CHECK["redis"], CHECK["subscriber heartbeat"]])
        heartbeat = result["subscriber heartbeat"]
        if heartbeat.ok is ok or time.monotonic() > deadline:
            return heartbeat
        time.sleep(0.5)


@pytest.mark.slow
def test_real_subscriber_passes_then_fails_when_stalled(app_env, app_settings, world, services):
    subscriber = services.start("subscriber", app_env)
    live = wait_for_heartbeat(app_settings, ok=True)
    assert live.ok, live.detail + subscriber.text()[-2000:]
    assert "state connected" in live.detail

    os.kill(subscriber.pid, signal.SIGSTOP)  # wedged: alive, holding its lock, doing nothing
    try:
        stalled = wait_for_heartbeat(app_settings, ok=False)
    finally:
        os.kill(subscriber.pid, signal.SIGCONT)
    assert not stalled.ok
    assert "subscriber stalled" in stalled.detail
    assert "restart the subscriber" in stalled.fix


def test_missing_heartbeat_fails(app_settings, world):
    result = diagnose(app_settings)["subscriber heartbeat"]
    assert not result.ok
    assert "no heartbeat" in result.detail


def test_replay_id_not_advancing_fails_replay_progress(app_settings, healthy, redis_conn):
    now = time.time()
    redis_conn.set(keys.replay_key(DEFAULT_CHANNEL), "10")
    redis_conn.hset(
        keys.heartbeat_key(DEFAULT_CHANNEL),
        mapping={"last_replay_id": "25", "last_event_at": str(now - 120)},
    )
    result = diagnose(app_settings)["replay progress"]
    assert not result.ok
    assert "not advancing" in result.detail
    assert "SF_EVENTS_REPLAY=ALL" in result.fix


def test_replay_progress_reads_the_position_of_the_transport_in_use(
    app_settings, healthy, redis_conn
):
    now = time.time()
    pubsub = dataclasses.replace(
        app_settings, events=dataclasses.replace(app_settings.events, transport="pubsub")
    )
    redis_conn.set(keys.replay_key(DEFAULT_CHANNEL), "10")  # CometD's, left behind
    redis_conn.set(keys.pubsub_replay_key(DEFAULT_CHANNEL), (25).to_bytes(8, "big").hex())
    redis_conn.hset(
        keys.heartbeat_key(DEFAULT_CHANNEL),
        mapping={"last_replay_id": "25", "last_event_at": str(now - 120)},
    )
    result = diagnose(pubsub)["replay progress"]
    assert result.ok, result.detail
    assert keys.pubsub_replay_key(DEFAULT_CHANNEL) in result.detail
    assert not diagnose(app_settings)["replay progress"].ok  # CometD's key is behind


def test_recent_replay_fallback_fails_replay_progress(app_settings, healthy, redis_conn):
    beat(redis_conn).record_fallback(5, -2, "400::The replayId {5} you provided was invalid.")
    result = diagnose(app_settings)["replay progress"]
    assert not result.ok
    assert "72 h retention" in result.detail


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("stored", "heartbeat", "ok"),
    [
        (None, {}, True),
        (42, {"last_replay_id": "42", "last_event_at": str(NOW - 999)}, True),
        (41, {"last_replay_id": "42", "last_event_at": str(NOW - 5)}, True),  # just received
        (41, {"last_replay_id": "42", "last_event_at": str(NOW - 60)}, False),
        (None, {"last_replay_id": "42", "last_event_at": str(NOW - 60)}, False),
        (-2, {"last_replay_id": "42", "last_event_at": str(NOW - 60)}, True),  # operator's choice
        (42, {"last_fallback_at": str(NOW - 3600)}, False),
        (42, {"last_fallback_at": str(NOW - 73 * 3600)}, True),
    ],
)
def test_replay_verdict(stored, heartbeat, ok):
    assert checks.replay_verdict(stored, heartbeat, NOW, DEFAULT_CHANNEL).ok is ok


# --- one order ------------------------------------------------------------------------------------


def fulfil(monkeypatch, settings, redis_conn, sandbox_admin, order_id: str) -> str:
    """Approve the order and let a real worker job fulfil it, as the subscriber would enqueue it."""
    approved = sandbox_admin.approve(order_id)
    event = {
        "order_id": order_id,
        "event_uuid": str(approved.get("EventUuid") or "doctor-1"),
        "replay_id": approved.get("replayId", 1),
        "published_at": "2026-04-09T18:31:40.517Z",
        "channel": DEFAULT_CHANNEL,
    }
    job_id = "evt-doctor-1"
    queue = provisioning_queue(redis_conn, settings.queue_name, 60)
    queue.enqueue_call(
        JOB_PATH,
        args=(event,),
        job_id=job_id,
        description=intake.job_description(event),
        meta=intake.job_meta(event),
    )
    monkeypatch.setattr(jobs, "_services", {})
    monkeypatch.setattr(jobs, "_settings", None)
    jobs.configure(settings)
    SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)
    return job_id


def test_order_without_pay_method_is_diagnosed(
    monkeypatch, app_settings, redis_conn, sandbox_admin
):
    refs = sandbox_admin.load(standard_document(paymethod=False))["refs"]
    beat(redis_conn)
    job_id = fulfil(monkeypatch, app_settings, redis_conn, sandbox_admin, refs["o1"])

    results = diagnose(app_settings, [*checks.CHECKS, *order_checks.checks(refs["o1"])])
    status = results["order status"]
    assert not status.ok
    assert "Activation_Status__c=Failed" in status.detail
    assert "Activation_Error_Code__c=409" in status.detail
    assert "409 Payment method missing" in status.fix
    timeline = results["fulfilment timeline"]
    assert not timeline.ok
    # The layout of `provisioner status`, which draws the doctor's timeline too.
    assert f"Attempt 1  FAILED  job {job_id}" in timeline.detail
    assert "error 409: " in timeline.detail
    assert re.search(r"validation +ok +\d", timeline.detail)
    assert f"rq-dashboard: /rq/0/view/job/{job_id}" in timeline.detail
    pay = results["payment methods"]
    assert not pay.ok
    assert pay.detail == "WHMCS client 1 has no payment method"
    assert "ask the customer to add one" in pay.fix
    assert results["order mapping"].ok
    assert "Fibre 100: pid 1, monthly, qty 1: ok" in results["order mapping"].detail


def test_activated_order_passes_every_order_line(
    monkeypatch, app_settings, redis_conn, sandbox_admin
):
    refs = sandbox_admin.load(standard_document())["refs"]
    beat(redis_conn)
    fulfil(monkeypatch, app_settings, redis_conn, sandbox_admin, refs["o1"])
    results = diagnose(app_settings, [*checks.CHECKS, *order_checks.checks(refs["o1"])])
    assert failures(results) == {}
    assert "Activation_Status__c=Activated" in results["order status"].detail
    assert re.search(r"WHMCS client \d+  order \d+", results["fulfilment timeline"].detail)
    assert "Visa 4242 (RemoteCreditCard, stripe)" in results["payment methods"].detail


def test_order_never_fulfilled_and_bad_ids(app_settings, healthy):
    order_id = healthy["refs"]["o2"]
    results = diagnose(app_settings, [*checks.CHECKS, *order_checks.checks(order_id)])
    assert results["order status"].ok  # a Draft order, never approved
    assert results["fulfilment timeline"].ok
    assert "no fulfilment attempt" in results["fulfilment timeline"].detail

    results = diagnose(app_settings, [*checks.CHECKS, *order_checks.checks("nonsense")])
    assert not results["order status"].ok
    assert "not a Salesforce Order id" in results["order status"].detail
    assert results["payment methods"].detail == "not checked: order status"


# --- stores ---------------------------------------------------------------------------------------


def test_unreachable_redis_and_database_fail(app_env, world):
    env = {
        **app_env,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x",
    }
    settings = load_settings(env, needs={"salesforce", "events", "orders", "whmcs"})
    results = diagnose(settings)
    assert not results["redis"].ok and "Redis error" in results["redis"].detail
    assert not results["database"].ok
    assert results["subscriber heartbeat"].detail == "not checked: redis"


# --- the command ----------------------------------------------------------------------------------


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "doctor", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_cli_json_and_exit_status(app_env, healthy, sandbox_admin):
    ok = run_cli(app_env, "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    body = json.loads(ok.stdout)
    assert body["ok"] is True
    assert [c["name"] for c in body["checks"]] == ALL
    assert set(body["checks"][0]) == {"name", "ok", "detail", "fix"}

    sandbox_admin.set_app(approved=False)
    bad = run_cli(app_env)
    assert bad.returncode == 1
    assert "[FAIL] salesforce login (JWT):" in bad.stdout
    assert "fix: Runbook 'Salesforce status not updated'" in bad.stdout
    assert app_env["WHMCS_API_SECRET"] not in bad.stdout + bad.stderr


def test_cli_reports_bad_configuration_as_a_failed_line(app_env, healthy):
    env = {**app_env, "SF_PRIVATE_KEY_PATH": "/nonexistent/key.pem", "WHMCS_API_URL": ""}
    result = run_cli(env, "--json")
    assert result.returncode == 1
    lines = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert "WHMCS_API_URL is not set" in lines["configuration"]["detail"]
    assert "cannot be read" in lines["private key file"]["detail"]
    assert lines["whmcs credentials"]["detail"] == "not checked: configuration"
    assert lines["redis"]["ok"] and lines["database"]["ok"]


@pytest.mark.parametrize(
    ("waiting", "ok", "shown"),
    [
        ({}, True, "prov:outbox is empty"),
        (
            {
                "8015g00000ABCDEAAA": outbox.first("Failed", NOW - 7200, "SF_AUTH"),
                "8015g00000ABCDFAAA": outbox.first("Activated", NOW - 10, "503"),
            },
            False,
            "2 outcome(s) wait",
        ),
        ({"8015g00000ABCDEAAA": None}, False, "1 outcome(s) wait"),  # unreadable: still counted
    ],
)
def test_outbox_verdict(waiting, ok, shown):
    verdict = checks.outbox_verdict(waiting, NOW)
    assert verdict.ok is ok and shown in verdict.detail
    if len(waiting) == 2:
        assert "Failed for Order 8015g00000ABCDEAAA" in verdict.detail
        assert "first refused 2.0 h ago" in verdict.detail and "SF_AUTH" in verdict.detail


def test_doctor_reports_waiting_outcomes(app_settings, redis_conn):
    outbox.put(redis_conn, "8015g00000ABCDEAAA", outbox.first("Failed", time.time(), "403"))
    ctx = Context(app_settings, {})
    result = checks.waiting_outcomes(ctx)
    assert not result.ok and "last refused with 403" in result.detail


def test_with_pubsub_the_event_channel_is_probed_over_grpc(app_env, healthy):
    """SF_EVENTS_TRANSPORT=pubsub: the probe is the subscriber's own gRPC channel and call
    metadata (GetTopic), not CometD; a topic the org does not have fails with gRPC's words."""
    env = {**app_env, "SF_EVENTS_TRANSPORT": "pubsub"}

    def channel_line(run_env: dict[str, str]) -> dict[str, Any]:
        result = run_cli(run_env, "--json")
        return {c["name"]: c for c in json.loads(result.stdout)["checks"]}[
            "event channel subscribable"
        ]

    good = channel_line(env)
    assert good["ok"], good
    assert good["detail"].startswith(f"Pub/Sub GetTopic {DEFAULT_CHANNEL} at ")
    assert "can_subscribe" in good["detail"]
    missing = channel_line({**env, "SF_PROVISION_EVENT_CHANNEL": "/event/Nothing__e"})
    assert not missing["ok"]
    assert "refused: NOT_FOUND" in missing["detail"]
