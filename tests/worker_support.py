"""Helpers for the worker tests: enqueue an event as the subscriber does, run real RQ workers.

A pytest plugin (tests/conftest.py) for its `sweeper` and `own_redis` fixtures."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Worker
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from sqlalchemy import Engine

from shared import queueing
from shared.config import Settings
from shared.connections import redis_client
from shared.salesforce import SalesforceClient
from shared.sfauth import TokenProvider
from subscriber.intake import job_description, job_event, job_meta
from tests.fixtures.outages import RedisServer
from worker import jobs, orchestrator, reaper
from worker.records import Records

CHANNEL = "/event/OrderProvisionRequested__e"


@pytest.fixture
def sweeper(app_settings, redis_conn, sqlite_engine):
    """The reaper every worker runs, in this process (its delivery of waiting outcomes)."""
    sf = SalesforceClient(
        app_settings.salesforce, TokenProvider(app_settings.salesforce, redis_conn)
    )
    yield reaper.Reaper(redis_conn, Records(sqlite_engine), sf, order_lock_ttl=2)
    sf.close()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own, to stop or pause mid-test; the shared one stays."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def event_from(published: dict[str, Any]) -> dict[str, Any]:
    """The job argument the subscriber would enqueue for a published platform event."""
    return job_event(CHANNEL, published)


def enqueue(conn: redis.Redis, settings: Settings, event: dict[str, Any], job_id: str = "") -> Job:
    queue = queueing.provisioning_queue(conn, settings.queue_name, settings.job_timeout)
    return queue.enqueue_call(
        queueing.JOB_PATH,
        args=(event,),
        job_id=job_id or queueing.job_id_for(event["event_uuid"], event["replay_id"]),
        timeout=settings.job_timeout,
        result_ttl=queueing.RESULT_TTL,
        failure_ttl=queueing.FAILURE_TTL,
        description=job_description(event),
        meta=job_meta(event),
    )


def work(settings: Settings) -> None:
    """Drain the queue with a real forking RQ Worker (each job runs in a forked work horse)."""
    jobs.configure(settings)
    conn = redis_client(settings.redis_url)
    queue = queueing.provisioning_queue(conn, settings.queue_name, settings.job_timeout)
    Worker([queue], connection=conn, serializer=JSONSerializer).work(burst=True)
    conn.close()


def tuned(settings: Settings, **whmcs: Any) -> Settings:
    """Settings with short timeouts for tests (WHMCS fields by keyword; job/lease via `_`)."""
    core = {k[1:]: whmcs.pop(k) for k in list(whmcs) if k.startswith("_")}
    return dataclasses.replace(settings, whmcs=dataclasses.replace(settings.whmcs, **whmcs), **core)


def failed_job_ids(conn: redis.Redis, settings: Settings) -> list[str]:
    registry = FailedJobRegistry(settings.queue_name, connection=conn, serializer=JSONSerializer)
    return registry.get_job_ids(cleanup=False)


def latest(engine: Engine, order_id: str):
    history = Records(engine).history(order_id)
    return history[-1] if history else (None, [])


def wait_until(predicate, timeout: float = 30.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def kill_9_with_horses(service):
    """kill -9 the worker and its work horses, as a node loss would. RQ's horse runs in a process
    group of its own (setpgrp), so killing the worker's group alone would leave it working."""
    children = Path(f"/proc/{service.pid}/task/{service.pid}/children").read_text().split()
    for pid in map(int, children):
        os.kill(pid, signal.SIGKILL)
    service.kill()
    wait_until(lambda: not any(_running(int(pid)) for pid in children))


def _running(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie is dead, just not yet reaped by its new parent


def kill_9_and_reap(services, doomed, env, timeout: float = 60):
    """kill -9 a worker mid-job; a new worker's reaper deals with the job it left."""
    kill_9_with_horses(doomed)
    survivor = services.start("worker", env)
    survivor.wait_for_message("Abandoned job reaped", timeout=timeout)
    return survivor


def run_in_process(settings: Settings, published: dict[str, Any], job_id: str = "evt-own"):
    """One job's orchestration in this process (not RQ's), its clients closed after."""
    services = jobs.build_services(settings)
    try:
        return orchestrator.run(services, orchestrator.Event.from_payload(published, job_id))
    finally:
        services.whmcs.close()
        services.salesforce.close()
        services.records.engine.dispose()
