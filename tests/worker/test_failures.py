"""Every failure code of the README table, produced by a sandbox fault or a fixture, run by real
forked RQ workers: the order ends Failed with the code, the database says so, and the job sits in
RQ's failed registry with its traceback."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer
from sqlalchemy import text

from sandbox.fixtures import standard_document
from shared import keys
from shared.errors import RedisUnavailable
from shared.sfid import new_id
from tests.worker_support import (
    enqueue,
    event_from,
    failed_job_ids,
    latest,
    run_in_process,
    tuned,
    wait_until,
    work,
)


@dataclass
class Case:
    code: str
    doc: Callable[[dict[str, Any]], None] = lambda doc: None
    setup: Callable[..., None] = lambda admin, conn, engine: None
    settings: dict[str, Any] = field(default_factory=dict)
    marks_order: bool = True  # the Salesforce order reads Failed with the code afterwards


def _sf(doc):
    return doc["salesforce"]


def _client(doc):
    return doc["whmcs"]["clients"][0]


def _two_lines(doc):
    _sf(doc)["orders"][0]["items"].append({"product": "static-ip", "Quantity": 1, "UnitPrice": 5})


def _stale_catalogue(doc):
    _two_lines(doc)
    doc["whmcs"]["products"] = doc["whmcs"]["products"][:1]  # pid 2 deleted in WHMCS ...


def _seed_catalogue(admin, conn, engine):
    # ... while every worker's cached GetProducts still lists it (within the cache TTL).
    products = [
        {
            "pid": pid,
            "paytype": "recurring",
            "allowqty": 1,
            "pricing": {"USD": {"monthly": "1.00", "annually": "1.00"}},
        }
        for pid in (1, 2)
    ]
    conn.set(keys.WHMCS_PRODUCTS, json.dumps(products), ex=60)


def _other_pricebook(doc):
    _sf(doc)["pricebooks"] = [{"ref": "other", "Name": "Partner"}]
    _sf(doc)["orders"][0]["pricebook"] = "other"


def _no_gateway(doc):
    _client(doc)["defaultgateway"] = ""
    _client(doc)["paymethods"][0]["gateway_name"] = ""


def _fractional_quantity(doc):
    _sf(doc)["orders"][0]["items"][0]["Quantity"] = 1.5  # only zero, negative or fractional fail


def fault(target, kind, count=1, **params):
    return lambda admin, conn, engine: admin.add_fault(target, kind, count=count, **params)


def _drop_step_table(admin, conn, engine):
    with engine.begin() as db:
        db.execute(text("DROP TABLE fulfilment_steps"))


CASES = [
    Case("WRONG_PRICEBOOK", doc=_other_pricebook),
    Case("NO_ITEMS", doc=lambda d: _sf(d)["orders"][0].update(items=[])),
    Case("UNMAPPED_ACCOUNT", doc=lambda d: _sf(d)["accounts"][0].pop("WHMCS_Client_ID__c")),
    Case("UNMAPPED_PRODUCT", doc=lambda d: _sf(d)["products"][0].pop("WH_Product_ID__c")),
    Case(
        "INVALID_BILLING_CYCLE",
        doc=lambda d: _sf(d)["products"][0].update(Billing_Cycle__c="Quarterly"),
    ),  # priced -1.00: WHMCS would silently bill monthly
    Case("UNKNOWN_WHMCS_PRODUCT", doc=lambda d: _sf(d)["products"][0].update(WH_Product_ID__c=99)),
    Case("INVALID_QUANTITY", doc=_fractional_quantity),
    Case("409", doc=lambda d: _client(d).pop("paymethods")),
    Case("NO_GATEWAY", doc=_no_gateway),
    Case("SERVICE_COUNT_MISMATCH", doc=_stale_catalogue, setup=_seed_catalogue),
    Case(
        "ETIMEOUT",
        setup=fault("whmcs.GetPayMethods", "hang", seconds=3),
        settings={"read_timeout": 0.5},
    ),
    Case("ECONNECTION", setup=fault("whmcs.GetPayMethods", "reset")),
    Case("EBADRESPONSE", setup=fault("whmcs.GetPayMethods", "nonjson")),
    Case("429", setup=fault("whmcs.GetPayMethods", "status", status=429)),
    Case("502", setup=fault("whmcs.AddOrder", "html", status=502)),
    Case("503", setup=fault("sf.query", "status", status=503)),
    Case("500", setup=fault("sf.query", "status", status=500)),
    Case("401", setup=fault("sf.query", "invalid_session", count=2)),
    Case(
        "403",
        setup=lambda admin, conn, engine: admin.set_role(
            ["GetProducts", "GetPayMethods", "GetOrders"]
        ),
    ),  # the API role lacks AddOrder
    Case(
        "WHMCS_ERROR",
        setup=fault("whmcs.AddOrder", "error", message="Your license key has expired"),
    ),
    Case(
        "SF_AUTH",
        setup=lambda admin, conn, engine: admin.set_app(approved=False),
        marks_order=False,
    ),  # no token, so Salesforce cannot be told: database and RQ can
    Case(
        "JOB_TIMEOUT",
        setup=fault("whmcs.GetPayMethods", "hang", seconds=6),
        settings={"read_timeout": 10, "_job_timeout": 2},
    ),
    Case("EDATABASE", setup=_drop_step_table),
]


@pytest.mark.parametrize("case", CASES, ids=[c.code for c in CASES])
def test_failure_code(case, sandbox_admin, app_settings, redis_conn, sqlite_engine):
    document = standard_document()
    case.doc(document)
    order_id = sandbox_admin.load(document)["refs"]["o1"]
    case.setup(sandbox_admin, redis_conn, sqlite_engine)
    settings = tuned(app_settings, **case.settings)
    job = enqueue(redis_conn, settings, event_from(sandbox_admin.approve(order_id)))

    work(settings)

    assert failed_job_ids(redis_conn, settings) == [job.id]
    result = Job.fetch(job.id, connection=redis_conn, serializer=JSONSerializer).latest_result()
    assert "Traceback" in result.exc_string
    stored = sandbox_admin.order(order_id)
    if case.marks_order:
        assert stored["Activation_Status__c"] == "Failed"
        assert stored["Activation_Error_Code__c"] == case.code
        message = stored["Activation_Error_Message__c"]
        assert message and len(message) <= 255
        assert settings.whmcs.secret not in message
    else:
        assert stored["Activation_Status__c"] == "Activating"
    if case.code != "EDATABASE":
        attempt, _steps = latest(sqlite_engine, order_id)
        assert (attempt.status, attempt.error_code) == ("failed", case.code)
        if not case.marks_order:
            assert "Salesforce not updated" in attempt.error_message
    orders = sandbox_admin.whmcs_orders()["orders"]
    assert len(orders) == (1 if case.code == "SERVICE_COUNT_MISMATCH" else 0)


@pytest.mark.parametrize(
    "raw",
    [
        "801000000000000' OR Name != '",
        "8015g00000AbCdE' UNION SELECT Id FROM User WHERE Name != '",
        "0015g00000XYZ12AAH",  # an Account id
        None,
        42,
    ],
)
def test_an_invalid_order_id_fails_before_any_soql(
    raw, sandbox_admin, app_settings, redis_conn, sqlite_engine
):
    sandbox_admin.load(standard_document())
    event = event_from(sandbox_admin.publish({"OrderId__c": raw}))
    job = enqueue(redis_conn, app_settings, event)

    work(app_settings)

    assert failed_job_ids(redis_conn, app_settings) == [job.id]
    calls = sandbox_admin.sf_counters()["api_calls"]
    assert calls["query"] == 0 and calls["patch"] == 0
    result = Job.fetch(job.id, connection=redis_conn, serializer=JSONSerializer).latest_result()
    assert "InvalidEvent" in result.exc_string


def test_an_order_that_does_not_exist_is_not_patched(
    sandbox_admin, app_settings, redis_conn, sqlite_engine
):
    sandbox_admin.load(standard_document())
    missing = new_id("Order")
    job = enqueue(
        redis_conn, app_settings, event_from(sandbox_admin.publish({"OrderId__c": missing}))
    )

    work(app_settings)

    assert failed_job_ids(redis_conn, app_settings) == [job.id]
    attempt, _steps = latest(sqlite_engine, missing)
    assert attempt.error_code == "ORDER_NOT_FOUND"
    assert sandbox_admin.sf_counters()["api_calls"]["patch"] == 0


# --- Redis gone in the middle of a job: the job runs in this process against its own
# redis-server, so stopping it leaves the shared test Redis (and RQ's bookkeeping) alone ---


def test_redis_gone_mid_job_is_eredis(sandbox_admin, app_settings, sqlite_engine, own_redis):
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    event = event_from(sandbox_admin.approve(order_id))
    settings = dataclasses.replace(app_settings, redis_url=own_redis.url)
    sandbox_admin.set_latency("whmcs.GetPayMethods", 2.0)  # the job holds the lease meanwhile

    def stop_during_payment_method():
        wait_until(lambda: sandbox_admin.whmcs_counters().get("GetPayMethods"), timeout=60)
        own_redis.stop()

    stopper = threading.Thread(target=stop_during_payment_method, daemon=True)
    stopper.start()
    with pytest.raises(RedisUnavailable):
        run_in_process(settings, event)
    stopper.join(timeout=60)

    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        "EREDIS",
    )
    assert stored["Activation_Error_Message__c"].startswith("Redis unavailable (order lease)")
    attempt, _steps = latest(sqlite_engine, order_id)
    assert (attempt.status, attempt.error_code, attempt.step) == (
        "failed",
        "EREDIS",
        "whmcs_create",
    )
    assert sandbox_admin.whmcs_orders()["orders"] == []


def test_redis_gone_before_the_lease_leaves_the_order_to_the_reaper(
    sandbox_admin, app_settings, sqlite_engine, own_redis
):
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    event = event_from(sandbox_admin.approve(order_id))
    own_redis.stop()

    with pytest.raises(RedisUnavailable):
        run_in_process(dataclasses.replace(app_settings, redis_url=own_redis.url), event)

    # Without the lease the job cannot tell whether the order is its to touch: it does not, and
    # its attempt stays `running` with the code for the reaper to deliver (test_reaper.py).
    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activating"
    assert sandbox_admin.sf_counters()["api_calls"]["patch"] == 0
    attempt, _steps = latest(sqlite_engine, order_id)
    assert (attempt.status, attempt.error_code) == ("running", "EREDIS")
