"""The queue contract between subscriber and worker: name, job path, serializer, job options.

The subscriber enqueues by the dotted path below and never imports worker code; a test checks
that the path imports.
"""

from __future__ import annotations

import uuid

import redis
from rq import Queue
from rq.serializers import JSONSerializer

JOB_PATH = "worker.jobs.provision_order"
RESULT_TTL = 7 * 24 * 3600  # keep finished jobs a week so ops can look them up in rq-dashboard
FAILURE_TTL = 90 * 24 * 3600


def provisioning_queue(connection: redis.Redis, name: str, job_timeout: int) -> Queue:
    # JSON, never pickle: a pickled job in a shared Redis is remote code execution.
    return Queue(
        name, connection=connection, serializer=JSONSerializer, default_timeout=job_timeout
    )


def job_id_for(event_uuid: str | None, replay_id: object) -> str:
    """A stable, RQ-valid job id that ops can match to the event: evt-<EventUuid>."""
    if event_uuid and all(c.isalnum() or c in "-_" for c in event_uuid) and len(event_uuid) <= 64:
        return f"evt-{event_uuid}"
    if isinstance(replay_id, int):
        return f"evt-r{replay_id}"
    return f"evt-x{uuid.uuid4().hex}"
