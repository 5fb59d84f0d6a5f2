"""Issue 12, the worker side: every approved order ends Activated or Failed.

Multi-unit lines for every `allowqty`; 429/503 from AddOrder as definite refusals and the
unknown-outcome wait with its own code; a Retry on an order that already names its WHMCS order;
Activated never overwritten (a database error after the success PATCH); and outcomes Salesforce
refused for a while, or could not take because the login was refused, delivered by the reaper of
a real `python -m worker` process once Salesforce takes them.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
from sqlalchemy import text

from sandbox.fixtures import standard_document
from shared import keys, outbox
from shared.salesforce import SalesforceClient
from shared.sfauth import TokenProvider
from tests.fixtures.outages import RedisServer
from tests.worker_support import (
    enqueue,
    event_from,
    kill_9_and_reap,
    latest,
    run_in_process,
    wait_until,
    work,
)


def whmcs_orders(admin):
    return admin.whmcs_orders()["orders"]


def approve_and_work(admin, conn, settings, order_id):
    enqueue(conn, settings, event_from(admin.approve(order_id)))
    work(settings)
    return admin.order(order_id)


def retry_and_work(admin, conn, settings, order_id):
    reply = admin.retry(order_id)
    assert reply["result"] == "published"
    enqueue(conn, settings, event_from(reply["event"]))
    work(settings)
    return admin.order(order_id)


def waiting(conn, order_id):
    raw = conn.hget(keys.OUTBOX, order_id)
    return outbox.Waiting.loads(raw) if raw is not None else None


# --- quantities ------------------------------------------------------------------------------


def test_multi_unit_lines_get_one_service_per_unit_whatever_allowqty(
    sandbox_admin, app_settings, redis_conn, sqlite_engine
):
    document = standard_document()
    items = document["salesforce"]["orders"][0]["items"]
    items[0]["Quantity"] = 3  # Fibre 100: allowqty 0, WHMCS's default
    items.append({"product": "static-ip", "Quantity": 2, "UnitPrice": 5})  # scaling
    document["whmcs"]["products"][0]["allowqty"] = 0
    document["whmcs"]["products"][1]["allowqty"] = 2
    order_id = sandbox_admin.load(document)["refs"]["o1"]

    stored = approve_and_work(sandbox_admin, redis_conn, app_settings, order_id)

    assert stored["Activation_Status__c"] == "Activated", stored
    (made,) = whmcs_orders(sandbox_admin)
    assert [(s["pid"], s["qty"]) for s in made["services"]] == [(1, 1)] * 3 + [(2, 2)]
    (call,) = sandbox_admin.whmcs_requests("AddOrder")["requests"]
    assert call["params"]["pid"] == {"0": "1", "1": "1", "2": "1", "3": "2"}
    assert call["params"]["qty"] == {"3": "2"}  # allowqty 0 is repeated, never sent qty
    assert sandbox_admin.whmcs_substitutions()["substitutions"] == []
    attempt, _ = latest(sqlite_engine, order_id)
    assert len(attempt.whmcs_service_ids) == 4


# --- 429 / 503 are refusals; the unknown-outcome wait has its own code -------------------


@pytest.mark.parametrize("status", [429, 503])
def test_addorder_429_or_503_ordered_nothing_and_a_retry_orders_at_once(
    status, sandbox_admin, app_settings, redis_conn, sqlite_engine
):
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    sandbox_admin.add_fault("whmcs.AddOrder", "status", status=status)

    stored = approve_and_work(sandbox_admin, redis_conn, app_settings, order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        str(status),
    )
    attempt, _ = latest(sqlite_engine, order_id)
    assert attempt.create_started_at is None  # the checkpoint is cleared: nothing was ordered

    stored = retry_and_work(sandbox_admin, redis_conn, app_settings, order_id)

    assert stored["Activation_Status__c"] == "Activated"
    assert len(whmcs_orders(sandbox_admin)) == 1
    assert sandbox_admin.whmcs_counters()["AddOrder"] == 2


def test_a_retry_while_an_unanswered_addorder_may_still_run_waits_with_its_own_code(
    sandbox_admin, app_settings, redis_conn
):
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    sandbox_admin.add_fault("whmcs.AddOrder", "html", status=502)  # no order was made
    sandbox_admin.add_fault("whmcs.GetOrders", "status", status=503)  # nor can we look
    stored = approve_and_work(sandbox_admin, redis_conn, app_settings, order_id)
    assert stored["Activation_Error_Code__c"] == "502"

    stored = retry_and_work(sandbox_admin, redis_conn, app_settings, order_id)

    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        "WHMCS_OUTCOME_UNKNOWN",
    )
    message = stored["Activation_Error_Message__c"]
    assert "got no answer" in message and "Provision / Retry after" in message
    assert "timed out" not in message
    assert sandbox_admin.whmcs_counters()["AddOrder"] == 1


# --- Activating with WHMCS_Order_ID__c set: finished, not skipped ---------------------------


def test_a_retry_accepts_the_pending_order_it_names_and_activates_it(
    sandbox_admin, app_settings, redis_conn
):
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    assert approve_and_work(sandbox_admin, redis_conn, app_settings, order_id)[
        "Activation_Status__c"
    ] == ("Activated")
    (made,) = whmcs_orders(sandbox_admin)
    sandbox_admin.call("whmcs/set_order_status", {"order_id": made["id"], "status": "Pending"})
    patches = len(sandbox_admin.patches())

    stored = retry_and_work(sandbox_admin, redis_conn, app_settings, order_id)

    assert stored["Activation_Status__c"] == "Activated"
    assert stored["WHMCS_Order_ID__c"] == str(made["id"])
    assert [o["status"] for o in whmcs_orders(sandbox_admin)] == ["Active"]
    counters = sandbox_admin.whmcs_counters()
    assert (counters["AddOrder"], counters["AcceptOrder"]) == (1, 2)
    assert len(sandbox_admin.patches()) == patches + 1  # Activated in one PATCH


@pytest.mark.parametrize("case", ["missing", "someone else's", "cancelled"])
def test_a_named_whmcs_order_that_is_not_this_orders_fails_with_its_own_code(
    case, sandbox_admin, app_settings, redis_conn
):
    refs = sandbox_admin.load(standard_document(orders=2))["refs"]
    approve_and_work(sandbox_admin, redis_conn, app_settings, refs["o2"])
    (other,) = whmcs_orders(sandbox_admin)
    order_id = refs["o1"]
    if case == "cancelled":
        approve_and_work(sandbox_admin, redis_conn, app_settings, order_id)
        mine = next(o for o in whmcs_orders(sandbox_admin) if o["id"] != other["id"])
        sandbox_admin.call(
            "whmcs/set_order_status", {"order_id": mine["id"], "status": "Cancelled"}
        )
        stored = retry_and_work(sandbox_admin, redis_conn, app_settings, order_id)
    else:
        named = other["id"] if case == "someone else's" else 999_999
        sf = SalesforceClient(
            app_settings.salesforce, TokenProvider(app_settings.salesforce, redis_conn)
        )
        sf.update("Order", order_id, {"WHMCS_Order_ID__c": str(named)})
        sf.close()
        stored = approve_and_work(sandbox_admin, redis_conn, app_settings, order_id)

    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        "WHMCS_ORDER_MISMATCH",
    )
    assert "WHMCS_Order_ID__c" in stored["Activation_Error_Message__c"]
    assert sandbox_admin.whmcs_counters()["AddOrder"] == (2 if case == "cancelled" else 1)


# --- once Salesforce says Activated, nothing marks the order Failed -------------------------


def test_a_database_error_after_the_success_patch_leaves_activated_for_the_reaper_to_record(
    sandbox_admin, app_settings, sqlite_engine, sweeper, redis_conn
):
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    event = event_from(sandbox_admin.approve(order_id))
    sandbox_admin.set_latency("sf.patch", 1.0)  # the success PATCH is on the wire ...

    def database_goes_away():  # ... when the fulfilment table disappears
        wait_until(lambda: sandbox_admin.whmcs_counters().get("AcceptOrder"), timeout=60)
        with sqlite_engine.begin() as db:
            db.execute(text("ALTER TABLE fulfilments RENAME TO fulfilments_away"))

    breaker = threading.Thread(target=database_goes_away, daemon=True)
    breaker.start()
    outcome = run_in_process(app_settings, event, "evt-db")
    breaker.join(timeout=60)

    assert outcome.outcome == "activated"
    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Activated",
        None,
    )
    assert redis_conn.hexists(keys.INFLIGHT, order_id)  # left for the reaper to record

    with sqlite_engine.begin() as db:
        db.execute(text("ALTER TABLE fulfilments_away RENAME TO fulfilments"))
    assert sweeper.run_once() == [order_id]

    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activated"
    attempt, _ = latest(sqlite_engine, order_id)
    assert attempt.status == "activated"
    assert not redis_conn.hlen(keys.INFLIGHT)


# --- undelivered outcomes are delivered (real worker processes) ------------------------------


@pytest.mark.slow
def test_a_failed_patch_refused_for_a_while_is_delivered_by_the_reaper(
    services, sandbox_admin, app_env, app_settings, redis_conn, sqlite_engine
):
    document = standard_document()
    document["whmcs"]["clients"][0].pop("paymethods")  # the order fails with 409
    order_id = sandbox_admin.load(document)["refs"]["o1"]
    # The API user may not write the error code (a permission set changed): 400 on the PATCH.
    sandbox_admin.set_field_access("Activation_Error_Code__c", updateable=False)
    worker = services.start("worker", {**app_env, "ORDER_LOCK_TTL": "2"})
    enqueue(redis_conn, app_settings, event_from(sandbox_admin.approve(order_id)))

    wait_until(lambda: (waiting(redis_conn, order_id) or outbox.Waiting("")).attempts >= 2, 60)
    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activating"
    attempt, _ = latest(sqlite_engine, order_id)
    assert (attempt.status, attempt.error_code) == ("failed", "409")
    sandbox_admin.set_field_access("Activation_Error_Code__c", updateable=True)  # fixed

    line = worker.wait_for_message("Outcome delivered to Salesforce", timeout=60)

    assert line["order_id"] == order_id and line["attempts"] >= 3
    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        "409",
    )
    assert not redis_conn.hlen(keys.OUTBOX)


@pytest.mark.slow
def test_a_refused_login_then_restored_gets_the_outcome_delivered(
    services, sandbox_admin, app_env, app_settings, redis_conn
):
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    event = event_from(sandbox_admin.approve(order_id))
    sandbox_admin.set_app(approved=False)
    env = {**app_env, "ORDER_LOCK_TTL": "2", "SF_LOGIN_BACKOFF": "1"}
    worker = services.start("worker", env)
    enqueue(redis_conn, app_settings, event)

    wait_until(lambda: (waiting(redis_conn, order_id) or outbox.Waiting("")).attempts >= 2, 60)
    assert waiting(redis_conn, order_id).last_error == "SF_AUTH"
    refusals = sandbox_admin.sf_counters()["login_refusals"]
    assert refusals <= 1 + waiting(redis_conn, order_id).attempts  # one per try, no more
    sandbox_admin.set_app(approved=True)

    worker.wait_for_message("Outcome delivered to Salesforce", timeout=60)

    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        "SF_AUTH",
    )
    # And the operator's Retry then activates it, ordering once.
    retry = sandbox_admin.retry(order_id)
    enqueue(redis_conn, app_settings, event_from(retry["event"]))
    wait_until(
        lambda: sandbox_admin.order(order_id)["Activation_Status__c"] == "Activated", timeout=60
    )
    assert len(whmcs_orders(sandbox_admin)) == 1


@pytest.mark.slow
def test_a_worker_killed_while_finishing_a_retry_is_reaped_and_the_next_retry_finishes(
    services, sandbox_admin, app_env, app_settings, redis_conn
):
    """Activating with WHMCS_Order_ID__c set is unfinished work, not a finished order: a job
    that dies on it is reaped like any other, and the order does not stay Activating."""
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    approve_and_work(sandbox_admin, redis_conn, app_settings, order_id)
    (made,) = whmcs_orders(sandbox_admin)
    sandbox_admin.call("whmcs/set_order_status", {"order_id": made["id"], "status": "Pending"})
    sandbox_admin.add_fault("whmcs.AcceptOrder", "hang", seconds=20)
    env = {**app_env, "ORDER_LOCK_TTL": "2", "WHMCS_WRITE_TIMEOUT": "30"}
    doomed = services.start("worker", env)
    retry = sandbox_admin.retry(order_id)
    enqueue(redis_conn, app_settings, event_from(retry["event"]))
    wait_until(
        lambda: any(f["target"] == "whmcs.AcceptOrder" for f in sandbox_admin.fault_history())
    )

    kill_9_and_reap(services, doomed, env)

    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        "WORKER_LOST",
    )
    assert f"WHMCS order {made['id']} exists" in stored["Activation_Error_Message__c"]

    stored = sandbox_admin.retry(order_id)
    enqueue(redis_conn, app_settings, event_from(stored["event"]))
    wait_until(
        lambda: sandbox_admin.order(order_id)["Activation_Status__c"] == "Activated", timeout=60
    )
    assert [o["status"] for o in whmcs_orders(sandbox_admin)] == ["Active"]
    assert sandbox_admin.whmcs_counters()["AddOrder"] == 1
    assert sandbox_admin.order(order_id)["WHMCS_Order_ID__c"] == str(made["id"])


def test_redis_gone_after_the_success_patch_leaves_activated(
    sandbox_admin, app_settings, sqlite_engine, tmp_path
):
    server = RedisServer(tmp_path)
    server.start()
    try:
        order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
        event = event_from(sandbox_admin.approve(order_id))
        sandbox_admin.set_latency("sf.patch", 1.0)  # Redis goes while the PATCH is on the wire

        def redis_goes_away():
            wait_until(lambda: sandbox_admin.whmcs_counters().get("AcceptOrder"), timeout=60)
            server.stop()

        stopper = threading.Thread(target=redis_goes_away, daemon=True)
        stopper.start()
        settings = dataclasses.replace(app_settings, redis_url=server.url)
        outcome = run_in_process(settings, event, "evt-r")
        stopper.join(timeout=60)
    finally:
        server.stop()

    assert outcome.outcome == "activated"
    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Activated",
        None,
    )
    assert latest(sqlite_engine, order_id)[0].status == "activated"
