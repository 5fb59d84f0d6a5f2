"""The RQ entry point: bind the log context, build the clients, run the orchestrator.

What a job raises is what RQ stores in Redis (exc_info, shown by rq-dashboard): a failure is
re-raised as JobFailed, its class, code and message with every secret scrubbed, and without the
original chain, whose messages may hold a raw Salesforce or WHMCS body.

Clients are built here, never at import time: the fork worker (--worker-class fork) forks a work
horse per job, and a socket opened before the fork would be shared by every horse. They are cached
per process id, so a SimpleWorker reuses its connections across jobs while every forked horse
builds its own.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

from rq import get_current_job
from rq.timeouts import JobTimeoutException

from shared.config import Settings
from shared.connections import database_engine, redis_client
from shared.jobpayload import JobPayload
from shared.logs import bind, scrub
from shared.salesforce import SalesforceClient
from shared.sfauth import TokenProvider
from shared.startup import start
from shared.whmcs import WhmcsClient
from worker import orchestrator, steps
from worker.records import Records

NEEDS = ("salesforce", "orders", "whmcs")

_settings: Settings | None = None
_services: dict[int, orchestrator.Services] = {}


def configure(settings: Settings) -> None:
    """Hand the worker process's settings to the jobs (a forked horse inherits them)."""
    global _settings
    _settings = settings


class JobFailed(Exception):
    """The only exception a job lets out to RQ: already scrubbed, and carrying no chain."""

    def __init__(self, exc: BaseException, secrets: tuple[str, ...]) -> None:
        code = getattr(exc, "code", "")
        label = f"{type(exc).__name__} {code}".strip()
        super().__init__(f"{label}: {scrub(str(exc), secrets)}")
        self.code = code


def provision_order(event: dict[str, Any]) -> dict[str, Any]:
    """Fulfil the order a job names (enqueued by the subscriber or the reconciler)."""
    job = get_current_job()
    job_id = job.id if job is not None else ""
    payload = JobPayload.from_payload(event)
    order_id = payload.order_id
    with bind(
        order_id=str(order_id)[:100] if order_id else None,
        job_id=job_id or None,
        event_uuid=payload.event_uuid,
        replay_id=payload.replay_id,
    ):
        services = services_for_this_process()
        if job is not None and job.worker_name:
            services = dataclasses.replace(services, worker_name=job.worker_name)
        try:
            result = orchestrator.run(services, orchestrator.Event.from_payload(event, job_id))
        except JobTimeoutException:
            raise  # RQ's own, holding nothing of ours
        except Exception as exc:
            raise JobFailed(exc, services.settings.secrets()) from None
        return result.as_result()


def services_for_this_process() -> orchestrator.Services:
    pid = os.getpid()
    if pid not in _services:
        _services.clear()  # another process's objects (inherited over fork): never reuse them
        _services[pid] = build_services(_settings or start("worker", NEEDS, log=False))
    return _services[pid]


def build_services(settings: Settings) -> orchestrator.Services:
    connection = redis_client(settings.redis)
    whmcs = WhmcsClient(settings.whmcs)
    return orchestrator.Services(
        settings=settings,
        salesforce=SalesforceClient(
            settings.salesforce, TokenProvider(settings.salesforce, connection)
        ),
        whmcs=whmcs,
        records=Records(database_engine(settings.database_url)),
        redis=connection,
        catalogue=steps.ProductCatalogue(connection, whmcs),
        worker_name=worker_name(),
    )


def worker_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"
