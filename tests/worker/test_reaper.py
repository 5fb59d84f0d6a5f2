"""The reaper on its own: what it does with an in-flight entry whose lease has lapsed, and with
an RQ job that never took its order's lease."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from rq import SimpleWorker
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from sandbox.fixtures import standard_document
from shared import keys, outbox
from shared.queueing import provisioning_queue
from shared.salesforce import SalesforceClient
from shared.sfauth import TokenProvider
from tests.worker_support import enqueue, event_from, failed_job_ids, latest, work
from worker import lease as leases
from worker import reaper
from worker.records import Attempt, Records

NOW = datetime(2026, 4, 9, 18, 0, tzinfo=UTC)


@pytest.fixture
def order_id(sandbox_admin):
    order = sandbox_admin.load(standard_document())["refs"]["o1"]
    sandbox_admin.approve(order)
    return order


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


def test_salesforce_down_leaves_the_outcome_waiting_for_delivery(
    order_id, sweeper, redis_conn, sqlite_engine, sandbox_admin
):
    records = Records(sqlite_engine)
    attempt = abandon(redis_conn, records, order_id)
    sandbox_admin.add_fault("sf.query", "status", count=1, status=503)

    now = time.time()
    assert sweeper.run_once(now) == [order_id]
    assert redis_conn.hlen(keys.INFLIGHT) == 0
    after = records.get(attempt.id)
    assert (after.status, after.error_code) == ("failed", "WORKER_LOST")
    assert "Salesforce not updated: 503 yet" in after.error_message
    waiting = outbox.Waiting.loads(redis_conn.hget(keys.OUTBOX, order_id))
    assert (waiting.status, waiting.code, waiting.attempts) == ("Failed", "WORKER_LOST", 1)
    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activating"

    assert sweeper.run_once(now + 1) == []  # backing off
    assert sweeper.run_once(now + outbox.backoff(1) + 1) == [order_id]
    assert sandbox_admin.order(order_id)["Activation_Error_Code__c"] == "WORKER_LOST"
    assert not redis_conn.hlen(keys.OUTBOX)


def test_a_delivery_slower_than_the_lease_ttl_keeps_the_order_from_a_second_reaper(
    order_id, sweeper, redis_conn, sqlite_engine, sandbox_admin, app_settings
):
    """Found by `make chaos`: two workers stalled on a Salesforce login both delivered one
    outcome, the first one's lease having lapsed (TTL 2 s here) mid-call."""
    now = time.time()
    outbox.put(redis_conn, order_id, outbox.first("Failed", now - 60, "400", code="409"))
    sandbox_admin.set_latency("sf.query", 3.5)  # the delivery's status read: past the TTL
    other = reaper.Reaper(redis_conn, Records(sqlite_engine), sweeper.salesforce, 2)
    delivered: list[str] = []
    first = threading.Thread(target=lambda: delivered.extend(sweeper.deliver(now)))
    first.start()
    time.sleep(2.8)

    assert leases.lease_exists(redis_conn, order_id)  # renewed while the call is slow
    assert other.deliver(now) == []
    first.join(timeout=30)
    assert delivered == [order_id]
    assert sandbox_admin.order(order_id)["Activation_Error_Code__c"] == "409"
    assert not redis_conn.hlen(keys.OUTBOX)


@pytest.mark.parametrize(
    ("ttl", "interval", "bound", "before_lease"),
    [(30, 10, 40, 70), (6, 2, 8, 14), (0.3, 0.2, 0.5, 0.8)],
)
def test_the_detection_bound(ttl, interval, bound, before_lease):
    assert reaper.interval_for(ttl) == interval
    assert reaper.detection_bound(ttl) == pytest.approx(bound)
    assert reaper.detection_bound_before_lease(ttl) == pytest.approx(before_lease)


# --- jobs RQ started that never took their order's lease -----------------------------------------

LATER = 60.0  # seconds: long past stale_after(2) = 4 s, when a live job has its lease


@pytest.fixture
def approved(sandbox_admin):
    order = sandbox_admin.load(standard_document())["refs"]["o1"]
    return order, event_from(sandbox_admin.approve(order))


@pytest.fixture
def job_sweeper(app_settings, redis_conn, sqlite_engine):
    sf = SalesforceClient(
        app_settings.salesforce, TokenProvider(app_settings.salesforce, redis_conn)
    )
    yield reaper.Reaper(
        redis_conn, Records(sqlite_engine), sf, order_lock_ttl=2, queue_name=app_settings.queue_name
    )
    sf.close()


def dequeued(redis_conn, settings, event):
    """What a worker killed between RQ's dequeue and the job's first line leaves: a job RQ lists
    as started (the calls RQ's SimpleWorker makes), whose code never ran."""
    enqueue(redis_conn, settings, event)
    queue = provisioning_queue(redis_conn, settings.queue_name, settings.job_timeout)
    worker = SimpleWorker([queue], connection=redis_conn, serializer=JSONSerializer)
    worker.register_birth()
    job, _queue = worker.dequeue_job_and_maintain_ttl(timeout=1)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    return job


def started_ids(redis_conn, settings):
    registry = StartedJobRegistry(settings.queue_name, connection=redis_conn)
    return registry.get_job_ids(cleanup=False)


def test_a_job_lost_before_its_lease_fails_its_order_with_worker_lost(
    approved, job_sweeper, redis_conn, sqlite_engine, sandbox_admin, app_settings
):
    order_id, event = approved
    job = dequeued(redis_conn, app_settings, event)

    assert job_sweeper.run_once() == []  # just started: a live job is taking its lease now
    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activating"

    assert job_sweeper.run_once(now=time.time() + LATER) == [order_id]

    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        "WORKER_LOST",
    )
    assert f"before job {job.id} took the order" in stored["Activation_Error_Message__c"]
    attempt = Records(sqlite_engine).by_job(order_id, job.id)
    assert (attempt.status, attempt.error_code) == ("failed", "WORKER_LOST")
    assert started_ids(redis_conn, app_settings) == []
    assert failed_job_ids(redis_conn, app_settings) == [job.id]
    assert not redis_conn.exists(keys.order_lock_key(order_id))
    calls = sandbox_admin.sf_counters()["api_calls"]
    assert job_sweeper.run_once(now=time.time() + LATER) == []
    assert sandbox_admin.sf_counters()["api_calls"] == calls


def test_a_job_rq_already_failed_as_abandoned_is_reaped_too(
    approved, job_sweeper, redis_conn, sandbox_admin, app_settings
):
    order_id, event = approved
    job = dequeued(redis_conn, app_settings, event)
    registry = StartedJobRegistry(
        app_settings.queue_name, connection=redis_conn, serializer=JSONSerializer
    )
    registry.cleanup(time.time() + 3600)  # RQ's own sweep got there first
    assert failed_job_ids(redis_conn, app_settings) == [job.id]

    assert job_sweeper.run_once(now=time.time() + LATER) == [order_id]
    assert sandbox_admin.order(order_id)["Activation_Error_Code__c"] == "WORKER_LOST"


def test_a_job_rq_failed_as_stuck_in_its_intermediate_queue_is_reaped(
    approved, job_sweeper, redis_conn, sandbox_admin, app_settings
):
    """A worker that died between RQ's BLMOVE and marking the job started: RQ's maintenance
    fails the job as stuck (the call below is RQ's own), and it never had a start time."""
    order_id, event = approved
    job = enqueue(redis_conn, app_settings, event)
    queue = provisioning_queue(redis_conn, app_settings.queue_name, app_settings.job_timeout)
    queue.remove(job)
    worker = SimpleWorker([queue], connection=redis_conn, serializer=JSONSerializer)
    worker.handle_job_failure(job, queue, exc_string="Job was stuck in intermediate queue.")
    assert failed_job_ids(redis_conn, app_settings) == [job.id]

    assert job_sweeper.run_once(now=time.time() + LATER) == [order_id]
    assert sandbox_admin.order(order_id)["Activation_Error_Code__c"] == "WORKER_LOST"


def test_a_job_whose_order_is_held_is_left_until_the_order_is_free(
    approved, job_sweeper, redis_conn, sandbox_admin, app_settings
):
    order_id, event = approved
    job = dequeued(redis_conn, app_settings, event)
    other = leases.Lease(redis_conn, order_id, 30)
    assert other.acquire()  # another job has the order

    assert job_sweeper.run_once(now=time.time() + LATER) == []
    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activating"
    assert started_ids(redis_conn, app_settings) == [job.id]

    other.release()  # ... and ends without a word (it would have settled the order)
    assert job_sweeper.run_once(now=time.time() + LATER) == [order_id]


def test_a_lost_job_on_an_order_no_longer_activating_leaves_it_alone(
    approved, job_sweeper, redis_conn, sqlite_engine, sandbox_admin, app_settings
):
    order_id, event = approved
    job = dequeued(redis_conn, app_settings, event)
    job_sweeper.salesforce.update(
        "Order", order_id, {"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "9"}
    )

    assert job_sweeper.run_once(now=time.time() + LATER) == [order_id]

    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activated"
    attempt = Records(sqlite_engine).by_job(order_id, job.id)
    assert (attempt.status, attempt.error_message) == (
        "skipped",
        f"job {job.id} left no attempt; the order reads Activated: left alone",
    )
    calls = sandbox_admin.sf_counters()["api_calls"]
    assert job_sweeper.run_once(now=time.time() + LATER) == []
    assert sandbox_admin.sf_counters()["api_calls"] == calls


def test_a_job_that_could_not_take_its_lease_gets_its_own_code_delivered(
    approved, job_sweeper, redis_conn, sqlite_engine, sandbox_admin, app_settings
):
    """The job failed taking the lease (Redis gone) and left its attempt `running` with EREDIS."""
    order_id, event = approved
    job = dequeued(redis_conn, app_settings, event)
    records = Records(sqlite_engine)
    attempt = records.begin(order_id=order_id, job_id=job.id, now=NOW, supersede=False)
    records.save(attempt.id, error_code="EREDIS", error_message="Redis unavailable (order lease)")

    assert job_sweeper.run_once(now=time.time() + LATER) == [order_id]

    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Error_Code__c"], stored["Activation_Error_Message__c"]) == (
        "EREDIS",
        "Redis unavailable (order lease)",
    )
    assert records.get(attempt.id).status == "failed"


def test_a_job_that_recorded_its_outcome_is_not_judged_again(
    approved, job_sweeper, redis_conn, sqlite_engine, sandbox_admin, app_settings
):
    order_id, event = approved
    job = dequeued(redis_conn, app_settings, event)
    records = Records(sqlite_engine)
    attempt = records.begin(order_id=order_id, job_id=job.id, now=NOW)
    records.save(attempt.id, status="failed", error_code="409")
    before = sandbox_admin.sf_counters()["api_calls"]

    assert job_sweeper.run_once(now=time.time() + LATER) == []

    assert sandbox_admin.sf_counters()["api_calls"] == before
    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activating"


ROW = Attempt(1, "801", "evt-1", 1, "running", "validation", error_code="EREDIS")


@pytest.mark.parametrize(
    ("attempt", "state", "lease_taken", "status", "code"),
    [
        (None, "Failed", True, "failed", "WORKER_LOST"),  # it died holding the lease; we failed it
        (None, "Activated", True, "activated", None),  # it got that far before it died
        (None, "Failed", False, "failed", "WORKER_LOST"),  # never took the lease; we failed it
        (None, "Activated", False, "skipped", None),  # never took the lease: did nothing
        (None, "not updated: 403", False, "failed", "WORKER_LOST"),
        (ROW, "Activated", False, "failed", "WORKER_LOST"),  # another job activated it, not this
    ],
)
def test_how_the_reaper_closes_the_attempt(attempt, state, lease_taken, status, code):
    values = reaper.closing_values("evt-1", attempt, state, "WORKER_LOST", "lost", lease_taken)
    assert (values["status"], values.get("error_code")) == (status, code)


def test_a_failure_salesforce_did_not_take_is_delivered_by_the_reaper(
    approved, job_sweeper, redis_conn, sqlite_engine, sandbox_admin, app_settings
):
    """WHMCS answers 503, then Salesforce answers 503 to the Failed PATCH: the order must not
    stay Activating. The job leaves its code to the reaper, which delivers it later."""
    order_id, event = approved
    sandbox_admin.add_fault("whmcs.AddOrder", "status", 1, status=503)
    sandbox_admin.add_fault("sf.patch", "status", 1, status=503)
    enqueue(redis_conn, app_settings, event)
    work(app_settings)
    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activating"
    attempt, _steps = latest(sqlite_engine, order_id)
    assert (attempt.status, attempt.error_code) == ("failed", "503")
    assert "Salesforce not updated yet: 503" in attempt.error_message
    assert outbox.Waiting.loads(redis_conn.hget(keys.OUTBOX, order_id)).code == "503"

    assert job_sweeper.run_once(now=time.time() + LATER) == [order_id]

    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == ("Failed", "503")
    assert latest(sqlite_engine, order_id)[0].status == "failed"
    assert sandbox_admin.whmcs_orders()["orders"] == []
