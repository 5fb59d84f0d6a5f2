"""The RQ entry point: bind the log context, build the clients, run the orchestrator.

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

from shared.config import Settings
from shared.connections import database_engine, redis_client
from shared.logs import bind
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


def provision_order(event: dict[str, Any]) -> dict[str, Any]:
    """Fulfil the order an OrderProvisionRequested__e event names (enqueued by the subscriber)."""
    job = get_current_job()
    job_id = job.id if job is not None else ""
    payload = event if isinstance(event, dict) else {}
    with bind(
        order_id=str(payload.get("order_id"))[:100] if payload.get("order_id") else None,
        job_id=job_id or None,
        event_uuid=payload.get("event_uuid"),
        replay_id=payload.get("replay_id"),
    ):
        services = services_for_this_process()
        if job is not None and job.worker_name:
            services = dataclasses.replace(services, worker_name=job.worker_name)
        result = orchestrator.run(services, orchestrator.Event.from_payload(event, job_id))
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
