"""Helpers for the worker tests: enqueue an event as the subscriber does, run real RQ workers."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import redis
from rq import Worker
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from sqlalchemy import Engine

from shared import queueing
from shared.config import Settings
from shared.connections import redis_client
from subscriber.intake import job_description, job_event, job_meta
from worker import jobs
from worker.records import Records

CHANNEL = "/event/OrderProvisionRequested__e"


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
