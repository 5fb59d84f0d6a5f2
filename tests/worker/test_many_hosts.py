"""Workers and a subscriber "on other hosts": each process gets a hostname of its own (a UTS
namespace, `unshare --uts`) and a wall clock seconds off the others (tests/fixtures/skewclock.c,
an LD_PRELOAD shim built here with the system C compiler; libfaketime 0.9.10 makes Python's
time.sleep fail and its timed waits hang). Leases, the reaper and the heartbeat must not care:
they read Redis's clock (shared/servertime.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from healthcheck.app import create_app
from sandbox.fixtures import standard_document
from sandbox.http_server import wait_until
from shared import keys
from shared.salesforce import SalesforceClient
from shared.servertime import offset, server_now
from shared.sfauth import TokenProvider
from tests.worker.test_reaper import LATER, dequeued
from tests.worker_support import event_from, kill_9_with_horses
from worker import clock, reaper
from worker.records import Records

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="unshare --uts needs root (CI runs as root)"),
]

SUBSCRIBED = "Subscribed to platform event channel"


SHIM = Path(__file__).parent.parent / "fixtures" / "skewclock.c"


@pytest.fixture(scope="module")
def skew_library(tmp_path_factory: pytest.TempPathFactory) -> str:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler, "no C compiler: .ci/run installs gcc"
    library = tmp_path_factory.mktemp("skewclock") / "skewclock.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(SHIM), "-ldl"], check=True
    )
    return str(library)


@pytest.fixture
def on_host(skew_library: str):
    """on_host(name, skew_seconds) -> (env additions, command prefix) for services.start."""

    def place(name: str, skew: float) -> tuple[dict[str, str], tuple[str, ...]]:
        env = {"LD_PRELOAD": skew_library, "CLOCK_SKEW_SECONDS": str(skew)}
        return env, ("unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', name)

    return place


def start_on(services, on_host, module: str, env: dict[str, str], host: str, skew: float):
    extra, prefix = on_host(host, skew)
    return services.start(module, {**env, **extra}, prefix=prefix)


@pytest.mark.parametrize(
    ("before", "server", "after", "ahead"),
    [(100.0, 100.5, 101.0, 0.0), (105.0, 100.0, 105.2, 5.1), (95.0, 100.0, 95.0, -5.0)],
)
def test_a_clock_offset_is_judged_at_the_middle_of_the_round_trip(before, server, after, ahead):
    assert offset(before, server, after) == pytest.approx(ahead)


def test_worker_clock_offsets_are_published_read_and_pruned(redis_conn):
    ahead, at = clock.measure(redis_conn, clock=lambda: time.time() + 7)
    assert ahead == pytest.approx(7, abs=0.5)
    clock.publish(redis_conn, "host-a.1", ahead, at)
    clock.publish(redis_conn, "gone.2", -3.0, at - clock.KEEP_FOR - 1)
    assert clock.offset_of(redis_conn, "host-a.1") == pytest.approx(7, abs=0.5)
    assert clock.offset_of(redis_conn, "never-published") == 0.0
    clock.prune(redis_conn, server_now(redis_conn))
    assert set(redis_conn.hkeys(keys.CLOCK_OFFSETS)) == {b"host-a.1"}


def test_skewed_workers_on_other_hosts_fulfil_and_the_heartbeat_age_is_true(
    services, on_host, sandbox_admin, app_env, app_settings, redis_conn
):
    env = app_env
    # Thirty seconds behind: by its own clock its heartbeat would look half a minute old.
    subscriber = start_on(services, on_host, "subscriber", env, "host-s", -30)
    workers = [
        start_on(services, on_host, "worker", env, "host-a", 5),
        start_on(services, on_host, "worker", env, "host-b", -5),
    ]
    subscriber.wait_for_message(SUBSCRIBED, timeout=30)
    for worker in workers:
        worker.wait_for(lambda line: "Listening on" in str(line.get("message")), timeout=30)
    refs = sandbox_admin.load(standard_document(orders=4))["refs"]
    order_ids = [refs[f"o{n}"] for n in range(1, 5)]
    events = [sandbox_admin.approve(order_id) for order_id in order_ids]
    assert wait_until(
        lambda: all(
            sandbox_admin.order(o)["Activation_Status__c"] == "Activated" for o in order_ids
        ),
        timeout=60,
    ), workers[0].text()[-2000:]

    offsets = {
        name.decode().split(".")[0]: clock.offset_of(redis_conn, name.decode())
        for name in redis_conn.hkeys(keys.CLOCK_OFFSETS)
    }
    assert offsets["host-a"] == pytest.approx(5, abs=1)
    assert offsets["host-b"] == pytest.approx(-5, abs=1)
    ran_on = {_worker_of(redis_conn, event).split(".")[0] for event in events}
    assert ran_on <= {"host-a", "host-b"}

    body = create_app({"SETTINGS": app_settings}).test_client().get("/health").get_json()
    seen = body["integrations"]["redis"]["subscriber"]
    assert seen["active"] is True
    assert seen["holder"].startswith("host-s:")
    assert seen["heartbeat_age_seconds"] < 10  # by local clocks it would be about 30


def test_a_skewed_survivor_reaps_a_killed_skewed_worker(
    services, on_host, sandbox_admin, app_env, app_settings, redis_conn
):
    env = {**app_env, "ORDER_LOCK_TTL": "3", "WHMCS_WRITE_TIMEOUT": "30"}
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    sandbox_admin.add_fault("whmcs.AddOrder", "commit_then_hang", seconds=8)
    doomed = start_on(services, on_host, "worker", env, "host-a", 5)
    subscriber = services.start("subscriber", env)
    subscriber.wait_for_message(SUBSCRIBED, timeout=30)
    sandbox_admin.approve(order_id)
    assert wait_until(lambda: len(sandbox_admin.whmcs_orders()["orders"]) == 1, timeout=30)
    # Its lease was renewed a moment ago: a reaper whose clock ran ahead must still leave it be.
    survivor = start_on(services, on_host, "worker", env, "host-b", 20)
    survivor.wait_for(lambda line: "Listening on" in str(line.get("message")), timeout=30)
    assert redis_conn.hexists(keys.INFLIGHT, order_id)
    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activating"

    kill_9_with_horses(doomed)

    reaped = survivor.wait_for_message("Abandoned job reaped", timeout=60)
    assert reaped["order_id"] == order_id
    assert 0 <= reaped["seconds_since_start"] < 60  # Redis time on both ends, not host clocks
    stored = sandbox_admin.order(order_id)
    assert (stored["Activation_Status__c"], stored["Activation_Error_Code__c"]) == (
        "Failed",
        "WORKER_LOST",
    )


def _worker_of(conn, event) -> str:
    for key in conn.keys("rq:job:*"):
        job = Job.fetch(key.decode().split(":", 2)[2], connection=conn, serializer=JSONSerializer)
        if job.args and job.args[0].get("event_uuid") == event["event"]["EventUuid"]:
            return job.worker_name or ""
    return ""


def test_the_reaper_judges_a_job_by_its_workers_published_clock_offset(
    redis_conn, app_settings, sandbox_admin, sqlite_engine
):
    """RQ stamps started_at with the worker's clock. A worker 100 s behind makes a job it just
    dequeued look 100 s old; corrected by its published offset, it is seconds old, and left be."""
    order_id = sandbox_admin.load(standard_document())["refs"]["o1"]
    event = event_from(sandbox_admin.approve(order_id))
    sf = SalesforceClient(
        app_settings.salesforce, TokenProvider(app_settings.salesforce, redis_conn)
    )
    job_sweeper = reaper.Reaper(
        redis_conn, Records(sqlite_engine), sf, order_lock_ttl=2, queue_name=app_settings.queue_name
    )
    job = dequeued(redis_conn, app_settings, event)
    ahead, at = clock.measure(redis_conn)
    clock.publish(redis_conn, job.worker_name, ahead - 100, at)
    job.started_at = job.started_at - timedelta(seconds=100)  # as that worker's clock had it
    job.save()

    assert job_sweeper.run_once(now=server_now(redis_conn) + 1) == []
    assert sandbox_admin.order(order_id)["Activation_Status__c"] == "Activating"
    assert job_sweeper.run_once(now=server_now(redis_conn) + LATER) == [order_id]
    sf.close()
