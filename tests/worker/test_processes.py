"""`python -m worker` as real processes: the runbook's log lines, two workers racing for one
order, and kill -9 in the middle of whmcs_create (the reaper fails the order; a retry orders
nothing new)."""

from __future__ import annotations

import pytest
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from sandbox.fixtures import standard_document
from shared import keys
from tests.worker_support import (
    enqueue,
    event_from,
    failed_job_ids,
    kill_9_and_reap,
    latest,
    wait_until,
)
from worker.records import Records

pytestmark = pytest.mark.slow


def job_status(conn, job_id):
    return Job.fetch(job_id, connection=conn, serializer=JSONSerializer).get_status()


def test_a_burst_worker_logs_the_runbook_story_in_json(
    services, sandbox_admin, app_env, app_settings, redis_conn
):
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    job = enqueue(redis_conn, app_settings, event_from(sandbox_admin.approve(order_id)))

    worker = services.start("worker", app_env, "--burst")
    assert worker.proc.wait(timeout=60) == 0

    assert job_status(redis_conn, job.id) == JobStatus.FINISHED
    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activated"
    lines = worker.lines()
    assert not [line for line in lines if "raw" in line], "every log line is JSON"
    messages = [line.get("message") for line in lines]
    story = [
        "Starting fulfillment orchestration",
        "Guard sees status=Activating",
        "validation",
        "sf_status_update",
        "order_details",
        "Item mapping report",
        "mapping",
        "payment_method",
        "WHMCS order created",
        "whmcs_create",
        "whmcs_accept",
        "sf_success_update",
        "Activated",
        "Fulfillment finished",
    ]
    positions = [messages.index(m) for m in story]
    assert positions == sorted(positions)
    job_lines = lines[positions[0] : positions[-1] + 1]
    assert all(line.get("job_id") == job.id and line.get("order_id") for line in job_lines)
    steps = {line["message"]: line for line in job_lines if line.get("step") == line["message"]}
    assert all("duration_ms" in line and "outcome" in line for line in steps.values())
    report = lines[messages.index("Item mapping report")]
    assert report["items"][0]["status"] == "ok" and report["items"][0]["whmcs_pid"] == 1
    final = lines[messages.index("Fulfillment finished")]
    assert final["outcome"] == "activated" and final["whmcs_order_id"]
    text = worker.text()
    token = redis_conn.hget(keys.SF_TOKEN, "access_token").decode()
    for secret in (token, app_settings.whmcs.secret, app_settings.whmcs.identifier):
        assert secret not in text


def test_the_simple_worker_class_fulfils_too(
    services, sandbox_admin, app_env, app_settings, redis_conn
):
    refs = sandbox_admin.load(standard_document(orders=2))["refs"]
    for ref in ("o1", "o2"):
        enqueue(redis_conn, app_settings, event_from(sandbox_admin.approve(refs[ref])))
    worker = services.start("worker", app_env, "--burst", "--worker-class", "simple")
    assert worker.proc.wait(timeout=60) == 0
    for ref in ("o1", "o2"):
        assert sandbox_admin.order(refs[ref])["Activation_Status__c"] == "Activated"
    assert len(sandbox_admin.whmcs_orders()["orders"]) == 2


def test_two_workers_never_run_one_order_at_once(
    services, sandbox_admin, app_env, app_settings, redis_conn, sqlite_engine
):
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    sandbox_admin.set_latency("whmcs.*", 0.5)  # keeps the first job busy for a few seconds
    workers = [services.start("worker", app_env) for _ in range(2)]
    for worker in workers:
        worker.wait_for(lambda line: "Listening on" in str(line.get("message")), timeout=30)
    event = event_from(sandbox_admin.approve(order_id))
    first = enqueue(redis_conn, app_settings, event, job_id="evt-one")
    second = enqueue(redis_conn, app_settings, event, job_id="evt-two")

    wait_until(
        lambda: {job_status(redis_conn, j.id) for j in (first, second)} == {JobStatus.FINISHED},
        timeout=60,
    )

    assert len(sandbox_admin.whmcs_orders()["orders"]) == 1
    assert sandbox_admin.whmcs_counters()["AddOrder"] == 1
    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activated"
    text = "".join(w.text() for w in workers)
    assert "Order already in progress elsewhere; leaving it to that job" in text
    outcomes = sorted(a.status for a, _ in Records(sqlite_engine).history(order_id))
    assert outcomes == ["activated", "skipped"]


def test_kill_9_during_whmcs_create_then_retry(
    services, sandbox_admin, app_env, app_settings, redis_conn, sqlite_engine
):
    env = {**app_env, "ORDER_LOCK_TTL": "2", "WHMCS_WRITE_TIMEOUT": "30"}
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    # AddOrder commits in WHMCS, then the reply never comes: the worker sits in whmcs_create.
    sandbox_admin.add_fault("whmcs.AddOrder", "commit_then_hang", seconds=8)
    doomed = services.start("worker", env)
    job = enqueue(redis_conn, app_settings, event_from(sandbox_admin.approve(order_id)))
    wait_until(lambda: len(sandbox_admin.whmcs_orders()["orders"]) == 1)
    attempt, _ = latest(sqlite_engine, order_id)
    assert attempt.step == "whmcs_create" and attempt.create_outcome_unknown

    kill_9_and_reap(services, doomed, env, timeout=30)
    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        "WORKER_LOST",
    )
    assert "whmcs_create" in stored["Activation_Error_Message__c"]
    attempt, _ = latest(sqlite_engine, order_id)
    assert (attempt.status, attempt.error_code) == ("failed", "WORKER_LOST")
    assert failed_job_ids(redis_conn, app_settings) == [job.id]
    result = Job.fetch(job.id, connection=redis_conn, serializer=JSONSerializer).latest_result()
    assert "WORKER_LOST" in result.exc_string
    assert redis_conn.hlen(keys.INFLIGHT) == 0

    retry = sandbox_admin.retry(order_id)
    second = enqueue(redis_conn, app_settings, event_from(retry["event"]))
    wait_until(lambda: job_status(redis_conn, second.id) == JobStatus.FINISHED, timeout=60)

    orders = sandbox_admin.whmcs_orders()["orders"]
    assert len(orders) == 1 and orders[0]["status"] == "Active"
    stored = sandbox_admin.order(order_id)
    assert stored["Activation_Status__c"] == "Activated"
    assert stored["WHMCS_Order_ID__c"] == str(orders[0]["id"])
