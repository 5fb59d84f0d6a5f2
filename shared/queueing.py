"""The queue contract between subscriber and worker: name, job path, serializer, job options.

The subscriber enqueues by the dotted path below and never imports worker code; a test checks
that the path imports.
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from shared import jobpayload
from shared.jobpayload import JobPayload

JOB_PATH = "worker.jobs.provision_order"
RESULT_TTL = 7 * 24 * 3600  # keep finished jobs a week so ops can look them up in rq-dashboard
FAILURE_TTL = 90 * 24 * 3600


def provisioning_queue(connection: redis.Redis, name: str, job_timeout: int) -> Queue:
    # JSON, never pickle: a pickled job in a shared Redis is remote code execution.
    return Queue(
        name, connection=connection, serializer=JSONSerializer, default_timeout=job_timeout
    )


def job_id_for(event_uuid: str | None, replay_id: object) -> str:
    """A stable, RQ-valid job id that ops can match to the event (see shared/jobpayload.py)."""
    return jobpayload.job_id_for(event_uuid, replay_id)


def enqueue_job(
    queue: Queue, payload: JobPayload, job_id: str, job_timeout: int, pipeline: Any = None
) -> Job:
    """The one way a provisioning job is enqueued, by the subscriber and the reconciler alike."""
    return queue.enqueue_call(
        JOB_PATH,
        args=(payload.to_payload(),),
        job_id=job_id,
        timeout=job_timeout,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        description=payload.description(),
        meta=payload.meta(),
        retry=None,  # a failed fulfilment ends as a Failed order, never a silent re-run
        pipeline=pipeline,
    )
