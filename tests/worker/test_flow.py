"""The fulfilment path end to end with real forked RQ workers, the emulators, Redis and SQLite:
success, duplicates, lease contention, unknown outcomes and manual retries (exactly once)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from sandbox.fixtures import standard_document
from shared import keys, outbox
from tests.worker_support import enqueue, event_from, failed_job_ids, latest, tuned, work
from worker import orchestrator
from worker.records import Records

STEP_NAMES = list(orchestrator.STEPS)


@pytest.fixture
def world(sandbox_admin):
    return sandbox_admin.load(standard_document(orders=2))["refs"]


def approve_and_enqueue(admin, conn, settings, order_id):
    return enqueue(conn, settings, event_from(admin.approve(order_id)))


def retry_and_enqueue(admin, conn, settings, order_id):
    reply = admin.retry(order_id)
    assert reply["result"] == "published"
    return enqueue(conn, settings, event_from(reply["event"]))


def whmcs_orders(admin):
    return admin.whmcs_orders()["orders"]


def test_success_path(world, sandbox_admin, app_settings, redis_conn, sqlite_engine):
    ids = [world["o1"], world["o2"]]
    job_ids = [approve_and_enqueue(sandbox_admin, redis_conn, app_settings, o).id for o in ids]

    work(app_settings)

    orders = whmcs_orders(sandbox_admin)
    assert len(orders) == 2
    for order_id, job_id in zip(ids, job_ids, strict=True):
        stored = sandbox_admin.order(order_id)
        made = [o for o in orders if f"SF-ORDER:{order_id}" in o["notes"]]
        assert len(made) == 1 and made[0]["status"] == "Active"
        assert stored["Activation_Status__c"] == "Activated"
        assert stored["WHMCS_Order_ID__c"] == str(made[0]["id"])
        assert not stored["Activation_Error_Code__c"] and not stored["Activation_Error_Message__c"]
        job = Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
        assert job.get_status() == JobStatus.FINISHED
        assert job.return_value()["whmcs_order_id"] == made[0]["id"]
        attempt, steps = latest(sqlite_engine, order_id)
        assert attempt.status == "activated" and attempt.whmcs_order_id == made[0]["id"]
        assert len(attempt.whmcs_service_ids) == 1 and attempt.whmcs_invoice_id
        assert [s.step for s in steps] == STEP_NAMES
        assert [s.outcome for s in steps] == ["ok", "skipped", *["ok"] * 6]

    calls = sandbox_admin.counters()
    # Salesforce: one SOQL read and one PATCH per order; one JWT login for everything.
    assert calls["salesforce"]["api_calls"]["query"] == 2
    assert calls["salesforce"]["api_calls"]["patch"] == 2
    assert calls["salesforce"]["logins"] == 1
    whmcs = calls["whmcs"]
    # GetProducts once for both orders (cached in Redis), three calls per order otherwise.
    assert whmcs.get("GetProducts") == 1
    assert (whmcs.get("GetPayMethods"), whmcs.get("AddOrder"), whmcs.get("AcceptOrder")) == (
        2,
        2,
        2,
    )
    assert not whmcs.get("GetOrders") and not whmcs.get("GetClientsDetails")
    add = sandbox_admin.whmcs_requests("AddOrder")["requests"][0]["params"]
    assert add["pid"] == {"0": "1"} and add["billingcycle"] == {"0": "monthly"}
    assert add["notes"] == f"Salesforce Order {sandbox_admin.order(ids[0])['OrderNumber']} " + (
        f"SF-ORDER:{ids[0]}"
    )
    accept = sandbox_admin.whmcs_requests("AcceptOrder")["requests"][0]["params"]
    assert (accept["autosetup"], accept["sendemail"]) == ("1", "1")
    assert redis_conn.hlen(keys.INFLIGHT) == 0 and not redis_conn.keys(keys.ORDER_LOCK_PREFIX + "*")


def test_a_duplicate_event_changes_nothing(
    world, sandbox_admin, app_settings, redis_conn, sqlite_engine
):
    event = event_from(sandbox_admin.approve(world["o1"]))
    enqueue(redis_conn, app_settings, event, job_id="evt-first")
    work(app_settings)
    before = sandbox_admin.counters()
    enqueue(redis_conn, app_settings, event, job_id="evt-redelivered")
    work(app_settings)

    assert len(whmcs_orders(sandbox_admin)) == 1
    after = sandbox_admin.counters()
    assert after["whmcs"] == before["whmcs"]  # WHMCS never asked
    sf_before, sf_after = before["salesforce"]["api_calls"], after["salesforce"]["api_calls"]
    assert sf_after["query"] == sf_before["query"] + 1 and sf_after["patch"] == sf_before["patch"]
    attempt, steps = latest(sqlite_engine, world["o1"])
    assert attempt.status == "skipped" and attempt.error_message == "status=Activated"
    assert [(s.step, s.outcome) for s in steps] == [("validation", "skipped")]
    assert failed_job_ids(redis_conn, app_settings) == []


def test_an_order_leased_elsewhere_is_left_alone(
    world, sandbox_admin, app_settings, redis_conn, sqlite_engine
):
    job = approve_and_enqueue(sandbox_admin, redis_conn, app_settings, world["o1"])
    redis_conn.set(keys.order_lock_key(world["o1"]), "another-worker", px=60_000)

    work(app_settings)

    assert Job.fetch(job.id, connection=redis_conn, serializer=JSONSerializer).get_status() == (
        JobStatus.FINISHED
    )
    assert sandbox_admin.counters()["salesforce"]["api_calls"]["query"] == 0
    assert not whmcs_orders(sandbox_admin)
    attempt, _steps = latest(sqlite_engine, world["o1"])
    assert attempt.status == "skipped" and "in progress elsewhere" in attempt.error_message
    assert redis_conn.get(keys.order_lock_key(world["o1"])) == b"another-worker"


def test_a_pay_method_without_gateway_uses_the_clients_default(
    sandbox_admin, app_settings, redis_conn
):
    document = standard_document()
    document["whmcs"]["clients"][0]["paymethods"][0]["gateway_name"] = ""
    order_id = sandbox_admin.load(document)["refs"]["o1"]
    approve_and_enqueue(sandbox_admin, redis_conn, app_settings, order_id)

    work(app_settings)

    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activated"
    assert sandbox_admin.whmcs_counters()["GetClientsDetails"] == 1
    assert whmcs_orders(sandbox_admin)[0]["paymentmethod"] == "stripe"


def test_the_database_mapping_wins_over_the_account_field(
    sandbox_admin, app_settings, redis_conn, sqlite_engine
):
    document = standard_document()
    document["whmcs"]["clients"].append({**document["whmcs"]["clients"][0], "id": 7})
    refs = sandbox_admin.load(document)["refs"]
    Records(sqlite_engine).set_mappings([(refs["acme"], 7, "")], now=_now())
    approve_and_enqueue(sandbox_admin, redis_conn, app_settings, refs["o1"])

    work(app_settings)

    assert [o["userid"] for o in whmcs_orders(sandbox_admin)] == [7]


def test_addorder_timeout_resolved_by_looking(
    world, sandbox_admin, app_settings, redis_conn, sqlite_engine
):
    """The write happened, the answer was lost: the same job finds the order and carries on."""
    settings = tuned(app_settings, write_timeout=1.0)
    sandbox_admin.add_fault("whmcs.AddOrder", "commit_then_hang", seconds=3)
    approve_and_enqueue(sandbox_admin, redis_conn, settings, world["o1"])

    work(settings)

    assert len(whmcs_orders(sandbox_admin)) == 1
    stored = sandbox_admin.order(world["o1"])
    assert stored["Activation_Status__c"] == "Activated"
    assert stored["WHMCS_Order_ID__c"] == str(whmcs_orders(sandbox_admin)[0]["id"])
    assert sandbox_admin.whmcs_counters()["AddOrder"] == 1


def test_addorder_commit_then_timeout_then_manual_retry(
    world, sandbox_admin, app_settings, redis_conn, sqlite_engine
):
    settings = tuned(app_settings, write_timeout=1.0)
    sandbox_admin.add_fault("whmcs.AddOrder", "commit_then_hang", seconds=3)
    sandbox_admin.add_fault("whmcs.GetOrders", "status", status=503)  # the lookup fails too
    first = approve_and_enqueue(sandbox_admin, redis_conn, settings, world["o1"])
    work(settings)

    assert failed_job_ids(redis_conn, settings) == [first.id]
    stored = sandbox_admin.order(world["o1"])
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        "ETIMEOUT",
    )
    attempt, _ = latest(sqlite_engine, world["o1"])
    assert attempt.create_outcome_unknown
    assert len(whmcs_orders(sandbox_admin)) == 1  # it was created, we just did not hear

    retry_and_enqueue(sandbox_admin, redis_conn, settings, world["o1"])
    work(settings)

    orders = whmcs_orders(sandbox_admin)
    assert len(orders) == 1 and orders[0]["status"] == "Active"
    assert sandbox_admin.whmcs_counters()["AddOrder"] == 1
    stored = sandbox_admin.order(world["o1"])
    assert stored["Activation_Status__c"] == "Activated"
    assert stored["WHMCS_Order_ID__c"] == str(orders[0]["id"])
    attempt, steps = latest(sqlite_engine, world["o1"])
    assert attempt.attempt == 2 and attempt.whmcs_order_id == orders[0]["id"]
    assert ("whmcs_create", "resumed") in [(s.step, s.outcome) for s in steps]


def test_a_failed_accept_then_retry_accepts_the_same_order(
    world, sandbox_admin, app_settings, redis_conn
):
    sandbox_admin.add_fault("whmcs.AcceptOrder", "error", message="Module Command Error")
    approve_and_enqueue(sandbox_admin, redis_conn, app_settings, world["o1"])
    work(app_settings)
    assert sandbox_admin.order(world["o1"])["Activation_Error_Code__c"] == "WHMCS_ERROR"
    assert whmcs_orders(sandbox_admin)[0]["status"] == "Pending"

    retry_and_enqueue(sandbox_admin, redis_conn, app_settings, world["o1"])
    work(app_settings)

    orders = whmcs_orders(sandbox_admin)
    assert len(orders) == 1 and orders[0]["status"] == "Active"
    assert sandbox_admin.order(world["o1"])["Activation_Status__c"] == "Activated"


def test_a_refused_success_update_is_delivered_and_a_retry_finishes_without_ordering(
    world, sandbox_admin, app_settings, redis_conn, sqlite_engine, sweeper
):
    sandbox_admin.add_fault("sf.patch", "status", status=503)  # the Activated PATCH only
    approve_and_enqueue(sandbox_admin, redis_conn, app_settings, world["o1"])
    work(app_settings)
    # Never Failed once the success PATCH went out: Activated waits for delivery.
    stored = sandbox_admin.order(world["o1"])
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Activating",
        None,
    )
    (made,) = whmcs_orders(sandbox_admin)
    assert made["status"] == "Active"
    waiting = outbox.Waiting.loads(redis_conn.hget(keys.OUTBOX, world["o1"]))
    assert (waiting.status, waiting.whmcs_order_id, waiting.last_error) == (
        "Activated",
        made["id"],
        "503",
    )
    assert latest(sqlite_engine, world["o1"])[0].status == "activated"

    assert sweeper.deliver(time.time() + 3600) == [world["o1"]]
    stored = sandbox_admin.order(world["o1"])
    assert stored["Activation_Status__c"] == "Activated"
    assert stored["WHMCS_Order_ID__c"] == str(made["id"])
    assert not redis_conn.hlen(keys.OUTBOX)

    # Provision / Retry on the Activated order: Activating with WHMCS_Order_ID__c set is
    # finished against the named order, not skipped, and nothing is ordered again.
    retry_and_enqueue(sandbox_admin, redis_conn, app_settings, world["o1"])
    work(app_settings)

    assert len(whmcs_orders(sandbox_admin)) == 1
    counters = sandbox_admin.whmcs_counters()
    assert (counters["AddOrder"], counters["AcceptOrder"]) == (1, 1)  # already Active
    stored = sandbox_admin.order(world["o1"])
    assert stored["Activation_Status__c"] == "Activated"
    assert stored["WHMCS_Order_ID__c"] == str(made["id"])
    attempt, steps = latest(sqlite_engine, world["o1"])
    assert attempt.status == "activated" and attempt.whmcs_order_id == made["id"]
    assert [(s.step, s.outcome) for s in steps] == [
        ("validation", "ok"),
        ("whmcs_create", "resumed"),
        ("whmcs_accept", "skipped"),
        ("sf_success_update", "ok"),
    ]


def test_a_cancelled_whmcs_order_is_not_adopted(world, sandbox_admin, app_settings, redis_conn):
    """Ops cancelled a broken order in WHMCS, fixed the mapping and retried: order afresh."""
    sandbox_admin.add_fault("whmcs.AcceptOrder", "error", message="Module Command Error")
    approve_and_enqueue(sandbox_admin, redis_conn, app_settings, world["o1"])
    work(app_settings)
    first = whmcs_orders(sandbox_admin)[0]["id"]
    sandbox_admin.call("whmcs/set_order_status", {"order_id": first, "status": "Cancelled"})

    retry_and_enqueue(sandbox_admin, redis_conn, app_settings, world["o1"])
    work(app_settings)

    live = [o for o in whmcs_orders(sandbox_admin) if o["status"] != "Cancelled"]
    assert len(live) == 1 and live[0]["id"] != first
    assert sandbox_admin.order(world["o1"])["WHMCS_Order_ID__c"] == str(live[0]["id"])


def _now():
    return datetime.now(UTC)
