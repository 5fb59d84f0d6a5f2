"""The reaper on its own: what it does with an in-flight entry whose lease has lapsed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sandbox.fixtures import standard_document
from shared import keys
from shared.salesforce import SalesforceClient
from shared.sfauth import TokenProvider
from worker import lease as leases
from worker import reaper
from worker.records import Records

NOW = datetime(2026, 4, 9, 18, 0, tzinfo=UTC)


@pytest.fixture
def order_id(sandbox_admin):
    order = sandbox_admin.load(standard_document())["refs"]["o1"]
    sandbox_admin.approve(order)
    return order


@pytest.fixture
def sweeper(app_settings, redis_conn, sqlite_engine):
    sf = SalesforceClient(
        app_settings.salesforce, TokenProvider(app_settings.salesforce, redis_conn)
    )
    yield reaper.Reaper(redis_conn, Records(sqlite_engine), sf, order_lock_ttl=2)
    sf.close()


def abandon(redis_conn, records, order_id, step="whmcs_create", **values):
    """What a killed job leaves behind: a running attempt and an entry with no live lease."""
    attempt = records.begin(order_id=order_id, job_id="evt-dead", worker="host.1", now=NOW)
    records.save(attempt.id, step=step, **values)
    entry = leases.InflightEntry("evt-dead", "gone", 1.0, "host.1")
    leases.register(redis_conn, order_id, entry)
    return attempt


def test_an_abandoned_order_is_failed_with_worker_lost(
    order_id, sweeper, redis_conn, sqlite_engine, sandbox_admin
):
    records = Records(sqlite_engine)
    attempt = abandon(redis_conn, records, order_id, create_started_at=NOW)

    assert sweeper.run_once() == [order_id]

    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        "WORKER_LOST",
    )
    message = stored["Activation_Error_Message__c"]
    assert "host.1" in message and "whmcs_create" in message and "outcome unknown" in message
    after = records.get(attempt.id)
    assert (after.status, after.error_code) == ("failed", "WORKER_LOST")
    assert redis_conn.hlen(keys.INFLIGHT) == 0
    assert not redis_conn.exists(keys.order_lock_key(order_id))
    assert sweeper.run_once() == []


def test_an_entry_with_a_live_lease_is_left_alone(order_id, sweeper, redis_conn, sqlite_engine):
    abandon(redis_conn, Records(sqlite_engine), order_id)
    assert leases.Lease(redis_conn, order_id, 30).acquire()
    assert sweeper.run_once() == []
    assert redis_conn.hlen(keys.INFLIGHT) == 1


def test_an_order_already_activated_is_not_failed(
    order_id, sweeper, redis_conn, sqlite_engine, sandbox_admin, app_settings
):
    records = Records(sqlite_engine)
    attempt = abandon(redis_conn, records, order_id, step="sf_success_update")
    sf = SalesforceClient(
        app_settings.salesforce, TokenProvider(app_settings.salesforce, redis_conn)
    )
    sf.update("Order", order_id, {"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "9"})

    assert sweeper.run_once() == [order_id]

    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activated"
    assert records.get(attempt.id).status == "activated"


def test_a_job_that_recorded_its_outcome_needs_no_salesforce_call(
    order_id, sweeper, redis_conn, sqlite_engine, sandbox_admin
):
    records = Records(sqlite_engine)
    attempt = abandon(redis_conn, records, order_id)
    records.save(attempt.id, status="failed", error_code="409")
    before = sandbox_admin.sf_counters()["api_calls"]

    assert sweeper.run_once() == [order_id]

    assert sandbox_admin.sf_counters()["api_calls"] == before
    assert records.get(attempt.id).error_code == "409"


def test_salesforce_down_keeps_the_entry_for_the_next_pass(
    order_id, sweeper, redis_conn, sqlite_engine, sandbox_admin
):
    records = Records(sqlite_engine)
    attempt = abandon(redis_conn, records, order_id)
    sandbox_admin.add_fault("sf.query", "status", count=1, status=503)

    assert sweeper.run_once() == []
    assert redis_conn.hlen(keys.INFLIGHT) == 1
    assert records.get(attempt.id).status == "running"

    assert sweeper.run_once() == [order_id]
    assert sandbox_admin.order(order_id)["Activation_Error_Code__c"] == "WORKER_LOST"


@pytest.mark.parametrize(("ttl", "interval", "bound"), [(30, 10, 40), (6, 2, 8), (0.3, 0.2, 0.5)])
def test_the_detection_bound(ttl, interval, bound):
    assert reaper.interval_for(ttl) == interval
    assert reaper.detection_bound(ttl) == pytest.approx(bound)
