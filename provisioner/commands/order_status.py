"""`provisioner status <OrderId>`: every fulfilment attempt on an order, with its step timeline."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shared.connections import database_engine
from shared.sfid import is_valid_id, to18
from shared.startup import start
from worker.records import Attempt, Records, StepRecord


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("order_id", help="Salesforce Order id (15 or 18 characters)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    if not is_valid_id(args.order_id, "Order"):
        print(f"provisioner status: {args.order_id!r} is not an Order id (801...)", file=sys.stderr)
        return 2
    settings = start("provisioner", needs=(), log=False)
    engine = database_engine(settings.database_url)
    try:
        history = Records(engine).history(to18(args.order_id))
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([as_dict(a, s) for a, s in history], default=str, indent=2))
    else:
        print(render(to18(args.order_id), history, {}))
    return 0 if history else 1


def render(
    order_id: str, history: list[tuple[Attempt, list[StepRecord]]], jobs: Mapping[str, str]
) -> str:
    """The timeline; `jobs` adds, per attempt, its RQ job's line (the doctor's `job_line`)."""
    if not history:
        return f"Order {order_id}: no fulfilment attempts recorded"
    lines = [f"Order {order_id}: {len(history)} attempt(s)"]
    for attempt, steps in history:
        lines.append("")
        lines.extend(_attempt_lines(attempt))
        for step in steps:
            detail = f"  {step.detail}" if step.detail else ""
            lines.append(
                f"    {_time(step.at)}  {step.step:<17} {step.outcome:<8} "
                f"{step.duration_ms:>8.1f} ms{detail}"
            )
        if attempt.job_id in jobs:
            lines.append(f"  {jobs[attempt.job_id]}")
    return "\n".join(lines)


def _attempt_lines(a: Attempt) -> list[str]:
    head = (
        f"Attempt {a.attempt}  {a.status.upper()}  job {a.job_id or '-'}  worker {a.worker or '-'}"
    )
    lines = [head, f"  started {_time(a.started_at)}  finished {_time(a.finished_at)}"]
    if a.whmcs_order_id or a.create_started_at:
        services = ",".join(str(s) for s in a.whmcs_service_ids) or "-"
        order = a.whmcs_order_id or "unknown (AddOrder sent, no answer recorded)"
        lines.append(
            f"  WHMCS client {a.whmcs_client_id}  order {order}  services {services}  "
            f"invoice {a.whmcs_invoice_id or '-'}"
        )
    if a.error_code or a.status == "skipped":
        label = f"error {a.error_code}: " if a.error_code else "skipped: "
        lines.append(f"  {label}{a.error_message}")
    if a.event_uuid or a.replay_id:
        lines.append(f"  event {a.event_uuid or '-'}  replay id {a.replay_id or '-'}")
    return lines


def as_dict(attempt: Attempt, steps: list[StepRecord]) -> dict[str, Any]:
    data = dict(vars(attempt))
    data["whmcs_service_ids"] = list(attempt.whmcs_service_ids)
    data["steps"] = [dict(vars(s)) for s in steps]
    return data


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"
