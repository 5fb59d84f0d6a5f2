"""`python -m worker`: settings and JSON logging first, the schema checked, then RQ and the reaper.

Run as many as you like, on one machine or many, against one Redis: the per-order lease keeps two
workers off one order, and every process also runs the reaper of abandoned jobs and the
reconciler (worker/reconciler.py; a leader lock lets one of them sweep at a time).
"""

from __future__ import annotations

import argparse
import logging
import sys

from rq import Queue, SimpleWorker, Worker
from rq.serializers import JSONSerializer
from sqlalchemy.exc import SQLAlchemyError

from shared import db
from shared.config import Settings
from shared.connections import database_engine, redis_client
from shared.queueing import provisioning_queue
from shared.salesforce import SalesforceClient
from shared.sfauth import TokenProvider
from shared.startup import EXIT_CONFIG, start
from worker import clock, jobs, reaper, reconciler
from worker.records import Records

log = logging.getLogger("worker")

# RQ's own sweep of abandoned jobs (10 min by default); the reaper acts sooner, this is the net.
MAINTENANCE_INTERVAL = 60
WORKER_CLASSES = {"fork": Worker, "simple": SimpleWorker}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="Fulfil queued Salesforce orders in WHMCS (an RQ worker plus the reaper).",
    )
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument(
        "--worker-class",
        choices=sorted(WORKER_CLASSES),
        default="simple",
        help="simple (the default): jobs run in this process, reusing its connections; "
        "fork: a fresh work horse per job (isolation at 1.5-2x the cost per order, see "
        "the README's Performance section)",
    )
    parser.add_argument(
        "--max-jobs",
        type=int,
        default=None,
        help="exit after this many jobs (let the restart policy start a fresh process)",
    )
    parser.add_argument("--name", help="worker name (default: <hostname>.<pid>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = start("worker", needs=jobs.NEEDS)
    engine = database_engine(settings.database_url)
    try:
        db.check(engine)
    except db.SchemaError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        log.error("Database schema is not current", extra={"error": str(exc)})
        return EXIT_CONFIG
    except SQLAlchemyError as exc:
        log.error("Database unreachable", extra={"error": type(exc).__name__})
        return 1
    jobs.configure(settings)

    own = redis_client(settings.redis)  # the reaper's; RQ gets its own connection below
    sweeper = reaper.Reaper(
        own,
        Records(engine),
        SalesforceClient(settings.salesforce, TokenProvider(settings.salesforce, own)),
        settings.order_lock_ttl,
        secrets=settings.secrets(),
        queue_name=settings.queue_name,
    )
    connection = redis_client(settings.redis)
    queue = provisioning_queue(connection, settings.queue_name, settings.job_timeout)
    sweeper_of_orders = build_reconciler(settings, queue)
    worker = WORKER_CLASSES[args.worker_class](
        [queue],
        connection=connection,
        name=args.name or jobs.worker_name(),
        serializer=JSONSerializer,
        maintenance_interval=MAINTENANCE_INTERVAL,
        log_job_description=False,  # the description holds the event payload
    )
    log.info(
        "Worker starting",
        extra={
            "queue": settings.queue_name,
            "worker": worker.name,
            "worker_class": args.worker_class,
            "burst": args.burst,
            "reaper_interval_s": sweeper.interval,
            "reconcile_interval_s": settings.reconcile_interval,
            "reconcile_after_s": settings.reconcile_after,
            "abandoned_detection_bound_s": reaper.detection_bound(settings.order_lock_ttl),
            "abandoned_before_lease_bound_s": reaper.detection_bound_before_lease(
                settings.order_lock_ttl
            ),
        },
    )
    offsets = clock.Publisher(own, worker.name)
    offsets.start()
    sweeper.start()
    sweeper_of_orders.start()
    try:
        worker.work(
            burst=args.burst,
            logging_level=settings.log_level,
            with_scheduler=False,
            max_jobs=args.max_jobs,
        )
    finally:
        sweeper_of_orders.stop()
        sweeper.stop()
        offsets.stop()
        engine.dispose()
    return 0


def build_reconciler(settings: Settings, queue: Queue) -> reconciler.Reconciler:
    """Its own Redis connection and Salesforce client: it runs in a thread beside RQ's loop."""
    own = redis_client(settings.redis_url)
    return reconciler.Reconciler(
        own,
        SalesforceClient(settings.salesforce, TokenProvider(settings.salesforce, own)),
        provisioning_queue(own, queue.name, settings.job_timeout),
        interval=settings.reconcile_interval,
        after=settings.reconcile_after,
        job_timeout=settings.job_timeout,
        query_timeout=settings.salesforce.timeout,
    )
