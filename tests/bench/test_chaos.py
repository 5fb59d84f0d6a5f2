"""The chaos run: its pure parts by tables, the quick run end to end, faults it cannot reach."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from sqlalchemy import update

from bench.chaos import promise as chaos_check
from bench.chaos import report as chaos_report
from bench.chaos import schedule as chaos_faults
from bench.chaos import stage as chaos_rig
from bench.chaos.inject import Injection
from bench.chaos.promise import ACTIVATED, FAILED, Attempt, Event, WhmcsOrder, World
from sandbox.fixtures import standard_document
from shared import db
from shared.whmcs import OrderLine, WhmcsClient
from tests.fixtures.infra import TEST_DATABASE_URL
from tests.worker_support import enqueue, event_from, tuned, wait_until, work

ROOT = Path(__file__).resolve().parents[2]
A, B, C = "801000000000001AAA", "801000000000002AAA", "801000000000003AAA"


def order(status: str, code: str = "", whmcs: str = "") -> dict:
    return {
        "Activation_Status__c": status,
        "Activation_Error_Code__c": code or None,
        "WHMCS_Order_ID__c": whmcs or None,
    }


def world(orders: dict, whmcs=(), events=(), enqueued=(), attempts=()) -> World:
    return World(
        approved=frozenset(orders),
        orders=orders,
        whmcs=tuple(whmcs),
        events=tuple(events),
        enqueued=frozenset(enqueued),
        attempts=tuple(attempts),
    )


def attempt(n: int, order_id: str, status: str, step: str, job: str = "") -> Attempt:
    return Attempt(n, order_id, job or f"evt-{n}", f"u{n}", status, step, "")


# --- the checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "ok"),
    [
        (ACTIVATED, "", True),
        (FAILED, "503", True),
        (FAILED, "", False),  # Failed without a code breaks the promise
        ("Activating", "", False),
        (None, "", False),
    ],
)
def test_settled_wants_activated_or_failed_with_a_code(status, code, ok):
    assert chaos_check.settled(world({A: order(status, code)})).ok is ok


@pytest.mark.parametrize(
    ("whmcs", "recorded", "ok"),
    [
        ([WhmcsOrder(7, "Active", A)], "7", True),
        ([], "7", False),
        ([WhmcsOrder(7, "Active", A), WhmcsOrder(8, "Cancelled", A)], "7", False),  # a duplicate
        ([WhmcsOrder(7, "Pending", A)], "7", False),  # never accepted
        ([WhmcsOrder(7, "Active", A)], "8", False),  # records another order
    ],
)
def test_an_activated_order_has_exactly_its_one_accepted_whmcs_order(whmcs, recorded, ok):
    check = chaos_check.one_accepted_whmcs_order(
        world({A: order(ACTIVATED, whmcs=recorded)}, whmcs)
    )
    assert check.ok is ok


@pytest.mark.parametrize(
    ("step", "whmcs_orders", "ok"),
    [
        ("payment_method", 0, True),
        ("payment_method", 1, False),  # failed before AddOrder, yet WHMCS has an order
        ("", 1, False),  # died before its first checkpoint (reaped): nothing may exist
        ("whmcs_create", 1, True),  # commit-then-timeout: the order exists, the retry adopts it
        ("whmcs_accept", 1, True),
        ("whmcs_accept", 2, False),
    ],
)
def test_a_failed_order_has_a_whmcs_order_only_if_it_got_to_whmcs_create(step, whmcs_orders, ok):
    made = [WhmcsOrder(n, "Pending", A) for n in range(1, whmcs_orders + 1)]
    state = world({A: order(FAILED, "503")}, made, attempts=[attempt(1, A, "failed", step)])
    assert chaos_check.failed_orders_have_at_most_their_own(state).ok is ok


def test_a_retried_activated_order_whose_retry_job_died_keeps_its_one_whmcs_order():
    """Seen in a pubsub quick run: a Retry on an Activated order, its job's worker killed, the
    order reaped Failed WORKER_LOST before any step: its WHMCS order predates the Retry."""
    state = world(
        {A: order(FAILED, "WORKER_LOST")},
        [WhmcsOrder(1, "Active", A)],
        attempts=[attempt(1, A, "failed", "")],
    )
    assert not chaos_check.failed_orders_have_at_most_their_own(state).ok
    assert chaos_check.failed_orders_have_at_most_their_own(state, retried=[A]).ok
    two = world(state.orders, [WhmcsOrder(1, "Active", A), WhmcsOrder(2, "Pending", A)])
    assert not chaos_check.failed_orders_have_at_most_their_own(two, retried=[A]).ok


def test_the_last_failed_attempt_names_the_step():
    attempts = [attempt(1, A, "failed", "whmcs_create"), attempt(2, A, "failed", "mapping")]
    assert chaos_check.last_failed_step(attempts, A) == "mapping"
    assert chaos_check.last_failed_step(attempts, B) == ""


def test_whmcs_orders_without_an_approved_salesforce_order_are_orphans():
    state = world({A: order(ACTIVATED)}, [WhmcsOrder(1, "Active", A), WhmcsOrder(2, "Active", C)])
    check = chaos_check.no_orphan_whmcs_orders(state)
    assert not check.ok and check.offenders == (f"WHMCS 2 ({C})",)


def test_an_event_never_enqueued_is_named():
    events = [Event("u1", 1, A), Event("u2", 2, B)]
    check = chaos_check.events_enqueued(
        world({A: order(ACTIVATED)}, events=events, enqueued={"u1"})
    )
    assert not check.ok and check.offenders == ("u2 (replay 2)",)


@pytest.mark.parametrize(
    ("crashed", "job", "ok"),
    [
        (True, "rec-801000000000002AAA-20260409180000000", True),  # lost with Redis, reconciled
        (True, "evt-u9", False),  # lost, and nothing found the order
        (False, "rec-801000000000002AAA-20260409180000000", False),  # no crash: no excuse
    ],
)
def test_an_event_lost_with_redis_last_second_is_excused_only_if_its_order_was_reconciled(
    crashed, job, ok
):
    events = [Event("u1", 1, A), Event("u2", 2, B)]
    state = world(
        {A: order(ACTIVATED), B: order(ACTIVATED)},
        events=events,
        enqueued={"u1"},
        attempts=[attempt(1, B, "activated", "", job)],
    )
    assert chaos_check.events_enqueued(state, redis_crashed=crashed).ok is ok


@pytest.mark.parametrize(
    ("status", "code", "job", "ok"),
    [
        (ACTIVATED, "", "rec-801000000000001AAA-1", True),
        (FAILED, "503", "rec-801000000000001AAA-1", True),
        ("Activating", "", "rec-801000000000001AAA-1", False),
        (ACTIVATED, "", "evt-1", False),  # finished, but not by the reconciler: no event existed
    ],
)
def test_an_approval_without_an_event_is_finished_by_the_reconciler(status, code, job, ok):
    state = world({A: order(status, code)}, attempts=[attempt(1, A, "activated", "", job)])
    assert chaos_check.unpublished_reconciled(state, {A}).ok is ok


@pytest.mark.parametrize(
    ("status", "recorded", "made", "final", "ok"),
    [
        (ACTIVATED, "7", [7], True, True),
        (ACTIVATED, "7", [7, 8], True, False),  # the Retry ordered again
        (ACTIVATED, "8", [8], True, False),  # now records another order
        (FAILED, "7", [7], True, False),  # after the retry round it must be Activated
        (FAILED, "7", [7], False, True),  # before it, a fault on the Retry's job may fail it
    ],
)
def test_a_retry_on_an_activated_order_keeps_its_whmcs_order(status, recorded, made, final, ok):
    state = world(
        {A: order(status, "WORKER_LOST" if status == FAILED else "", recorded)},
        [WhmcsOrder(n, "Active", A) for n in made],
    )
    assert chaos_check.retried_activated_kept(state, {A: "7"}, final=final).ok is ok


@pytest.mark.parametrize(
    ("services", "ok"),
    [
        (((1, 1), (1, 1), (3, 3)), True),
        (((1, 1), (3, 3)), False),  # a unit of pid 1 missing
        (((1, 2), (3, 3)), False),  # one service holding 2 where one per unit was ordered
        (((1, 1), (1, 1), (3, 1), (3, 1), (3, 1)), False),  # a scaling product split up
    ],
)
def test_the_whmcs_services_must_match_the_quantities(services, ok):
    state = world({A: order(ACTIVATED, whmcs="7")}, [WhmcsOrder(7, "Active", A, services)])
    expected = {A: {1: (2, 2), 3: (1, 3)}}
    assert chaos_check.services_match_quantities(state, expected).ok is ok


def test_an_event_or_an_order_fulfilled_twice_is_named():
    twice = [attempt(1, A, "activated", "", "evt-x"), attempt(2, A, "activated", "", "evt-x")]
    check = chaos_check.fulfilled_at_most_once(world({A: order(ACTIVATED)}, attempts=twice))
    assert not check.ok and set(check.offenders) == {"job evt-x x2", f"order {A} x2"}
    once = [attempt(1, A, "failed", "whmcs_accept"), attempt(2, A, "activated", "")]
    assert chaos_check.fulfilled_at_most_once(world({A: order(ACTIVATED)}, attempts=once)).ok


def test_an_activated_order_retried_may_be_finished_once_more_by_the_retry_job():
    again = [attempt(1, A, "activated", ""), attempt(2, A, "activated", "")]
    state = world({A: order(ACTIVATED)}, attempts=again)
    assert chaos_check.fulfilled_at_most_once(state, retried={A}).ok
    assert not chaos_check.fulfilled_at_most_once(state).ok
    third = [*again, attempt(3, A, "activated", "")]
    check = chaos_check.fulfilled_at_most_once(world({A: order(ACTIVATED)}, attempts=third), {A})
    assert not check.ok


def test_every_order_must_be_activated_after_the_one_retry_round():
    state = world({A: order(ACTIVATED), B: order(FAILED, "503")})
    check = chaos_check.all_activated(state, rounds=1)
    assert not check.ok and check.offenders == (f"{B}=Failed 503",)
    assert "at most one Provision / Retry" in check.name


def test_the_whmcs_tag_is_read_from_the_notes_and_the_services_are_counted():
    record = {
        "id": "12",
        "status": "Active",
        "notes": f"Salesforce Order 00000101 SF-ORDER:{A}",
        "services": [{"pid": 1, "qty": 1}, {"pid": 1, "qty": 1}, {"pid": 3, "qty": 3}],
    }
    found = WhmcsOrder.from_record(record)
    assert (found.id, found.status, found.sf_order_id) == (12, "Active", A)
    assert found.holds() == {1: (2, 2), 3: (1, 3)}
    assert WhmcsOrder.from_record({"id": 3, "notes": None}).sf_order_id is None


# --- the schedule and the table -----------------------------------------------------------------


@pytest.mark.parametrize("transport", ["cometd", "pubsub"])
def test_the_schedule_is_reproducible_from_its_seed_and_covers_every_kind(transport):
    def plan(seed, quick=True):
        return chaos_faults.plan(seed, 60, quick=quick, transport=transport)

    first, again = plan(7), plan(7)
    assert first == again
    assert first != plan(8)
    assert {p.kind for p in first} == {kind.key for kind in chaos_faults.kinds(transport)}
    assert {k.target.split(".")[0] for k in chaos_faults.STREAM_KINDS[transport]} == {transport}
    assert all(0.08 * 60 <= p.at <= 0.7 * 60 for p in first)
    full = plan(7, quick=False)
    assert [p.kind for p in full].count("restart_redis") == 1
    assert [p.kind for p in full].count("crash_redis") == 1
    assert len(full) > len(first)


def test_the_orders_cover_every_allowqty_and_quantities_one_to_three():
    lines = [line for n in range(30) for line in chaos_rig.order_lines(n)]
    assert {product for product, _ in lines} == set(chaos_rig.PRODUCTS)
    for product in chaos_rig.PRODUCTS:
        assert {q for p, q in lines if p == product} == {1, 2, 3}
    assert any(len(chaos_rig.order_lines(n)) == 2 for n in range(30))


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (3, {1: (2, 2)}),  # fibre100, allowqty 1: one service per unit
        (7, {2: (3, 3)}),  # static-ip, allowqty 0: the product repeated, one service each
        (8, {3: (1, 3), 1: (1, 1)}),  # mailbox, allowqty 2 ("scaling"): one service holds 3
    ],
)
def test_the_services_an_order_must_end_with(n, expected):
    assert chaos_rig.expected_services(n) == expected


def test_hits_of_a_whmcs_fault_are_the_calls_it_struck_and_of_a_stream_fault_its_window():
    whmcs_hits = {("AddOrder", "status"): {A}}
    approvals = {1.0: A, 2.2: B, 9.0: C}

    def between(start, end):
        return {o for at, o in approvals.items() if start <= at <= end}

    seen = chaos_report.Seen(whmcs_hits, duplicates={A})
    add = Injection("add_503", 0.5)
    assert chaos_report.hits(add, 0.6, between, seen) == {A}
    lost = Injection("lost_batch", 0.5)
    assert chaos_report.hits(lost, 1.0, between, seen) == {A, B}
    dup = Injection("duplicate", 0.5)
    assert chaos_report.hits(dup, 8.0, between, seen) == {A, C}
    kill = Injection("kill_subscriber", 2.0, hit={A}, window=[2.0, 9.5])
    assert chaos_report.hits(kill, None, between, seen) == {A, B, C}
    crash = Injection("crash_redis", 2.0, hit={A}, window=[2.0, 2.5])
    assert chaos_report.hits(crash, None, between, seen) == {A, B}  # B: approved while away


def test_hits_of_the_refused_outcome_window_are_the_refused_and_the_order_made_to_fail():
    seen = chaos_report.Seen({("AddOrder", "error"): {C}, ("AddOrder", "status"): {A}}, refused={B})
    refuse = Injection("refuse_outcome", 1.0, window=[1.0, 9.0])
    assert chaos_report.hits(refuse, None, lambda s, e: {A}, seen) == {B, C}
    unpublished = Injection("unpublished", 1.0, hit={A})
    assert chaos_report.hits(unpublished, None, lambda s, e: {B}, seen) == {A}


def test_a_fault_that_found_nothing_to_strike_did_not_take_effect():
    retry = Injection("retry_activated", 1.0, took=False)
    taken = Injection("retry_activated", 2.0, hit={A}, kept={A: "7"})
    state = world({A: order(ACTIVATED, whmcs="7")}, [WhmcsOrder(7, "Active", A)])
    rows = chaos_report.fault_rows([retry, taken], lambda i: None, lambda i: i.hit, state, state)
    assert [(r.label, r.injected, r.fired, len(r.hit)) for r in rows] == [
        (chaos_faults.BY_KEY["retry_activated"].label, 2, 1, 1)
    ]


def test_no_fault_is_an_sf_query_fault_that_the_reconciler_could_take_instead_of_a_job():
    assert not [k.key for k in chaos_faults.KINDS if k.target.startswith("sf.")]


def test_outcomes_are_summarised_most_common_first():
    state = world({A: order(ACTIVATED), B: order(FAILED, "503"), C: order(ACTIVATED)})
    assert chaos_report.summarise(state, [A, B, C]) == "2 Activated, 1 Failed 503"
    assert chaos_report.summarise(state, []) == "-"


# --- faults the run does not reach: a busy client, a kill at the wrong moment --------------------


def test_an_unknown_addorder_is_found_behind_fifty_newer_orders_of_a_busy_client(
    sandbox_admin, app_settings, redis_conn, sqlite_engine
):
    settings = tuned(app_settings, write_timeout=1.0)
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    enqueue(redis_conn, settings, event_from(sandbox_admin.approve(order_id)))
    sandbox_admin.add_fault("whmcs.AddOrder", "commit_then_hang", 1, seconds=3)
    sandbox_admin.add_fault("whmcs.GetOrders", "status", 1, status=503)  # the lookup fails too
    work(settings)
    assert sandbox_admin.order(order_id)["Activation_Error_Code__c"] == "ETIMEOUT"
    with WhmcsClient(settings.whmcs) as whmcs:  # the reseller's other orders keep coming
        for _ in range(60):
            whmcs.add_order(1, "stripe", [OrderLine(1, "monthly")], "another order")
    with sqlite_engine.begin() as conn:  # Provision / Retry the next day
        yesterday = datetime.now(UTC) - timedelta(days=1)
        conn.execute(update(db.fulfilments).values(create_started_at=yesterday))
    enqueue(redis_conn, settings, event_from(sandbox_admin.retry(order_id)["event"]))
    work(settings)

    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activated"
    tag = f"SF-ORDER:{order_id}"
    made = [w for w in sandbox_admin.whmcs_orders()["orders"] if tag in (w.get("notes") or "")]
    assert len(made) == 1, f"WHMCS orders for one Salesforce order: {made}"


# A worker dying where a kill -9 can land: RQ has dequeued the job and marked it started; the job's
# own code, which takes the order's lease first, has not run. The same calls RQ's worker makes.
DIE_AFTER_DEQUEUE = """
import os, signal, sys
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from shared.connections import redis_client
from shared.queueing import provisioning_queue
conn = redis_client(sys.argv[1])
worker = SimpleWorker(
    [provisioning_queue(conn, sys.argv[2], 600)], connection=conn, serializer=JSONSerializer
)
worker.register_birth()
job, _queue = worker.dequeue_job_and_maintain_ttl(timeout=5)
worker.prepare_execution(job)
worker.prepare_job_execution(job)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_a_worker_killed_between_dequeue_and_the_lease_leaves_no_order_activating(
    sandbox_admin, app_env, app_settings, redis_conn, services
):
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    enqueue(redis_conn, app_settings, event_from(sandbox_admin.approve(order_id)))
    died = subprocess.run(
        [sys.executable, "-c", DIE_AFTER_DEQUEUE, app_env["REDIS_URL"], app_settings.queue_name],
        cwd=ROOT,
        timeout=60,
    )
    assert died.returncode == -signal.SIGKILL
    worker = services.start("worker", {**app_env, "ORDER_LOCK_TTL": "1"})  # reaper every 0.3 s
    worker.wait_for(lambda line: "Listening on" in str(line.get("message")), timeout=30)
    started = StartedJobRegistry(
        app_settings.queue_name, connection=redis_conn, serializer=JSONSerializer
    )
    started.cleanup(time.time() + 3600)  # RQ's own abandoned-job sweep, an hour from now
    wait_until(lambda: sandbox_admin.order(order_id)["Activation_Status__c"] != "Activating", 10)

    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        "WORKER_LOST",
    )
    assert "before job" in stored["Activation_Error_Message__c"]
    assert sandbox_admin.whmcs_orders()["orders"] == []


# --- the run ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("transport", ["cometd", "pubsub"])
def test_the_quick_chaos_run_passes_every_check_and_prints_its_table(tmp_path, transport):
    run = subprocess.run(
        [
            *(sys.executable, "-m", "bench.chaos", "--quick", "--seed", "20260409"),
            *("--database-url", TEST_DATABASE_URL, "--out", str(tmp_path)),
            *("--transport", transport),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = run.stdout
    assert run.returncode == 0, f"{run.stderr[-6000:]}\n{output[-4000:]}"
    assert "## Chaos run: PASS" in output
    for name in (
        "every approved order is Activated or Failed with a code; none Activating",
        "every Activated order has exactly one WHMCS order, accepted, the one it records",
        "a Failed order that failed before whmcs_create has no WHMCS order (others at most one)",
        "no WHMCS order exists without a Salesforce order",
        "every Activated order's WHMCS services match its quantities (one per unit, per allowqty)",
        "every published event was enqueued at least once (or, lost with Redis, reconciled)",
        "every approval whose event was never published was finished by the reconciler",
        "a Retry on an Activated order keeps it Activated on its one WHMCS order",
        "every published event was fulfilled at most once",
        "every approved order is Activated after at most one Provision / Retry",
        "no secret or token in any log line or Salesforce field",
    ):
        assert f"| {name} | ok |" in output
    for kind in chaos_faults.kinds(transport):
        assert f"| {kind.label} | {kind.quick} |" in output
    assert "retried in 1 round(s)" in output or "0 Failed orders retried" in output
    name = (
        "chaos-quick-latest.md" if transport == "cometd" else f"chaos-quick-{transport}-latest.md"
    )
    assert (tmp_path / name).read_text() == output.rstrip("\n") + "\n"
