"""The reconciler: its decisions by table, one sweep against the sandbox and real Redis, and real
worker processes taking an approval whose event never came to a terminal status."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from rq.job import Job, validate_job_id
from rq.serializers import JSONSerializer

from sandbox.fixtures import standard_document
from shared import keys, queueing
from shared.errors import IntegrationError
from shared.jobpayload import RECONCILER, JobPayload, reconciled_job_id
from shared.salesforce import SalesforceClient
from shared.sfauth import TokenProvider
from shared.sfid import new_id
from tests.worker_support import enqueue, event_from, wait_until
from worker import reconciler
from worker.reconciler import Candidate, Reconciler

LATER = 10.0  # the sweeps below look this far ahead, so RECONCILE_AFTER=1 has passed


# --- decisions --------------------------------------------------------------------------------


def test_the_query_is_one_soql_for_overdue_activating_orders_oldest_first():
    cutoff = datetime(2026, 4, 9, 18, 31, 40, 517000, tzinfo=UTC)
    assert reconciler.reconcile_soql(cutoff, 200) == (
        "SELECT Id, LastModifiedDate FROM Order WHERE Activation_Status__c = 'Activating' "
        "AND LastModifiedDate < 2026-04-09T18:31:40Z ORDER BY LastModifiedDate ASC LIMIT 200"
    )


@pytest.mark.parametrize(
    ("now", "last", "interval", "due"),
    [(100.0, 50.0, 60, False), (110.0, 50.0, 60, True), (111.0, 50.0, 60, True)],
)
def test_is_due(now, last, interval, due):
    assert reconciler.is_due(now, last, interval) is due


def test_orders_with_a_job_or_an_outcome_waiting_are_left_alone():
    found = [Candidate(o, "2026-04-09T18:31:40.517+0000") for o in ("a", "b", "c", "d")]
    assert reconciler.orphans(found, busy={"a"}, waiting={"c"}) == [found[1], found[3]]


def test_candidates_keep_well_formed_order_ids_in_their_18_character_form():
    order = new_id("Order")
    rows = [
        {"Id": order[:15], "LastModifiedDate": "2026-04-09T18:31:40.517+0000"},
        {"Id": "junk", "LastModifiedDate": "2026-04-09T18:31:40.517+0000"},
        {"Id": order, "LastModifiedDate": None},
    ]
    assert reconciler.candidates(rows) == [Candidate(order, "2026-04-09T18:31:40.517+0000")]


def test_a_reconciled_job_id_is_per_order_and_approval_and_rq_valid():
    order = new_id("Order")
    first = reconciled_job_id(order, "2026-04-09T18:31:40.517+0000")
    assert first == f"rec-{order}-202604091831405170000"
    validate_job_id(first)
    assert reconciled_job_id(order, "2026-04-09T18:31:41.000+0000") != first


def test_the_reconciled_payload_is_the_events_shape():
    payload = JobPayload.reconciled("801000000000001AAA", "2026-04-09T18:31:40.517+0000")
    as_sent = payload.to_payload()
    assert set(as_sent) == {"order_id", "event_uuid", "replay_id", "published_at", "channel"}
    assert as_sent["channel"] == RECONCILER and as_sent["event_uuid"] is None
    assert JobPayload.from_payload(json.loads(json.dumps(as_sent))) == payload
    assert payload.meta()["source"] == "reconciler"


def test_the_lock_outlives_a_sweep_stuck_on_its_query():
    assert reconciler.lock_ttl(60, 30) == 90
    assert reconciler.lock_ttl(1, 30) == 45


# --- one sweep against the sandbox ------------------------------------------------------------


@pytest.fixture
def make_reconciler(app_settings, redis_conn):
    """Reconcilers as in a running system: a sweep on record, long ago, so the next is due."""
    redis_conn.hset(keys.RECONCILER_STATE, "last_sweep_at", "0")
    built = []

    def make(holder: str = "test") -> Reconciler:
        settings = app_settings
        salesforce = SalesforceClient(
            settings.salesforce, TokenProvider(settings.salesforce, redis_conn)
        )
        queue = queueing.provisioning_queue(redis_conn, settings.queue_name, settings.job_timeout)
        made = Reconciler(
            redis_conn,
            salesforce,
            queue,
            interval=60,
            after=1,
            job_timeout=settings.job_timeout,
            holder=holder,
            clock=lambda: time.time() + LATER,
        )
        built.append(made)
        return made

    yield make
    for made in built:
        made.salesforce.close()


def approved_without_event(sandbox_admin, count: int = 1) -> list[str]:
    refs = sandbox_admin.load(standard_document(orders=count))["refs"]
    orders = [refs[f"o{n}"] for n in range(1, count + 1)]
    for order_id in orders:
        assert sandbox_admin.approve(order_id, publish=False) == {}
    return orders


def queries(sandbox_admin) -> int:
    return sandbox_admin.sf_counters()["api_calls"]["query"]


def queued_jobs(redis_conn, app_settings) -> list[Job]:
    queue = queueing.provisioning_queue(redis_conn, app_settings.queue_name, 60)
    return [Job.fetch(i, connection=redis_conn, serializer=JSONSerializer) for i in queue.job_ids]


def test_one_query_gives_every_orphaned_order_one_job(
    sandbox_admin, redis_conn, app_settings, make_reconciler, caplog
):
    orders = approved_without_event(sandbox_admin, 3)
    sweeper = make_reconciler()
    before = queries(sandbox_admin)
    assert sorted(sweeper.tick()) == sorted(orders)
    assert queries(sandbox_admin) == before + 1
    jobs = queued_jobs(redis_conn, app_settings)
    assert sorted(job.args[0]["order_id"] for job in jobs) == sorted(orders)
    for job in jobs:
        assert job.id.startswith("rec-") and job.args[0]["channel"] == RECONCILER
        assert job.func_name == queueing.JOB_PATH and job.meta["source"] == "reconciler"
    logged = [r for r in caplog.records if r.getMessage() == "Reconciled order with no event"]
    assert sorted(r.order_id for r in logged) == sorted(orders)
    state = reconciler.read_state(redis_conn)
    assert state["reconciled_total"] == "3" and state["overdue"] == "3"


def test_two_sweeps_never_make_two_jobs_for_one_approval(
    sandbox_admin, redis_conn, app_settings, make_reconciler
):
    [order] = approved_without_event(sandbox_admin)
    sweeper = make_reconciler()
    now = time.time() + LATER
    assert sweeper.sweep(now) == [order]
    redis_conn.delete(f"rq:queue:{app_settings.queue_name}")  # as if a worker took it
    assert sweeper.sweep(now + 60) == []
    assert sweeper.sweep(now + 120) == []
    assert reconciler.read_state(redis_conn)["reconciled_total"] == "1"


def test_a_new_approval_of_the_same_order_gets_a_new_job(
    sandbox_admin, redis_conn, app_settings, make_reconciler
):
    [order] = approved_without_event(sandbox_admin)
    sweeper = make_reconciler()
    assert sweeper.sweep(time.time() + LATER) == [order]
    redis_conn.delete(f"rq:queue:{app_settings.queue_name}")
    time.sleep(0.01)  # LastModifiedDate has millisecond precision
    sandbox_admin.approve(order, publish=False)
    assert sweeper.sweep(time.time() + LATER) == [order]
    assert reconciler.read_state(redis_conn)["reconciled_total"] == "2"


@pytest.mark.parametrize("held_by", ["lease", "inflight", "outbox", "queued", "started"])
def test_an_order_with_a_live_job_or_a_waiting_outcome_is_left_alone(
    held_by, sandbox_admin, redis_conn, app_settings, make_reconciler
):
    [order] = approved_without_event(sandbox_admin)
    if held_by == "lease":
        redis_conn.set(keys.order_lock_key(order), "token", px=60_000)
    elif held_by == "inflight":
        redis_conn.hset(keys.INFLIGHT, order, json.dumps({"job_id": "evt-x"}))
    elif held_by == "outbox":
        redis_conn.hset(keys.OUTBOX, order, json.dumps({"status": "Activated"}))
    else:
        job = enqueue(redis_conn, app_settings, event_from({"payload": {"OrderId__c": order}}))
        if held_by == "started":
            queue = queueing.provisioning_queue(redis_conn, app_settings.queue_name, 60)
            queue.remove(job.id)
            registry = queue.started_job_registry.key  # entries are <job id>:<execution id>
            redis_conn.zadd(registry, {f"{job.id}:exec-1": time.time() + 600})
    assert make_reconciler().tick() == []
    assert reconciler.read_state(redis_conn)["overdue"] == "1"


def test_orders_not_yet_overdue_or_not_activating_are_not_touched(
    sandbox_admin, redis_conn, app_settings, make_reconciler
):
    refs = sandbox_admin.load(standard_document(orders=2))["refs"]
    sandbox_admin.approve(refs["o1"], publish=False)  # o2 stays Draft
    sweeper = make_reconciler()
    assert sweeper.sweep(time.time()) == []  # o1 was modified less than RECONCILE_AFTER ago
    assert sweeper.sweep(time.time() + LATER) == [refs["o1"]]


def test_one_reconciler_leads_however_many_run(
    sandbox_admin, redis_conn, app_settings, make_reconciler
):
    approved_without_event(sandbox_admin)
    first, second = make_reconciler("a"), make_reconciler("b")
    before = queries(sandbox_admin)
    assert first.tick() is not None
    assert second.tick() is None  # not the leader
    assert first.tick() is None  # the leader, but not due for another interval
    assert queries(sandbox_admin) == before + 1
    first.stop()  # releases the lock: the other takes over at once, and waits its interval
    assert second.tick() is None
    assert redis_conn.get(keys.RECONCILER_LEADER).decode() == second.leadership.value


# --- real worker processes --------------------------------------------------------------------


@pytest.mark.slow
def test_an_approval_whose_event_never_came_is_fulfilled_by_the_reconciler_alone(
    services, sandbox_admin, app_env, redis_conn
):
    """Two workers, no subscriber, no event: the order still ends Activated, with one WHMCS
    order and one job."""
    [order] = approved_without_event(sandbox_admin)
    env = {**app_env, "RECONCILE_INTERVAL": "1", "RECONCILE_AFTER": "1"}
    workers = [services.start("worker", env) for _ in range(2)]
    done = wait_until(
        lambda: sandbox_admin.order(order)["Activation_Status__c"] != "Activating", timeout=60
    )
    logs = "\n".join(w.text()[-2000:] for w in workers)
    assert done, logs
    assert sandbox_admin.order(order)["Activation_Status__c"] == "Activated", logs
    reconciled = [
        line
        for w in workers
        for line in w.lines()
        if line.get("message") == "Reconciled order with no event"
    ]
    assert [line["order_id"] for line in reconciled] == [order]
    assert len(sandbox_admin.whmcs_orders()["orders"]) == 1
    assert sandbox_admin.events() == []
    # More sweeps pass; the order is terminal, so nothing more is enqueued.
    assert wait_until(
        lambda: float(reconciler.read_state(redis_conn)["last_sweep_at"]) > time.time() - 0.5,
        timeout=10,
    )
    assert reconciler.read_state(redis_conn)["reconciled_total"] == "1"


def test_a_failed_query_waits_for_the_next_interval(
    sandbox_admin, redis_conn, app_settings, make_reconciler
):
    """Salesforce down: the sweep fails (the loop logs it), and the next query is one interval
    later, not at every turn of the loop."""
    approved_without_event(sandbox_admin)
    sandbox_admin.add_fault("sf.query", "status", 1, status=503)
    sweeper = make_reconciler()
    with pytest.raises(IntegrationError):
        sweeper.tick()
    before = queries(sandbox_admin)
    assert sweeper.tick() is None
    assert queries(sandbox_admin) == before and queued_jobs(redis_conn, app_settings) == []
