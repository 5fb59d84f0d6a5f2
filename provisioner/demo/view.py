"""What the demo shows: a progress bar on a terminal (plain lines elsewhere) and the summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from provisioner.demo.plan import (
    ACTIVATED,
    CUSTOMERS,
    FAILED,
    NO_PAY_METHOD,
    UNMAPPED,
    WHMCS_DOWN,
    Outcome,
    PlannedOrder,
    as_expected,
)

BAR_WIDTH = 30


@dataclass(frozen=True)
class Row:
    planned: PlannedOrder
    customer: str
    outcome: Outcome


def progress_bar(rows: Sequence[Row], elapsed: float, width: int = BAR_WIDTH) -> str:
    activated = sum(1 for r in rows if r.outcome.status == ACTIVATED)
    failed = sum(1 for r in rows if r.outcome.status == FAILED)
    total = len(rows) or 1
    filled = round(width * (activated + failed) / total)
    bar = "#" * filled + "-" * (width - filled)
    return (
        f"[{bar}] {activated + failed:>3}/{len(rows)}  "
        f"activated {activated}  failed {failed}  {elapsed:5.1f}s"
    )


def outcome_line(row: Row, done: int, total: int) -> str:
    """One line per finished order, for logs and CI (where a redrawn bar would be noise)."""
    out = row.outcome
    detail = f"WHMCS order {out.whmcs_order_id}" if out.status == ACTIVATED else out.error_code
    return (
        f"[{done:>{len(str(total))}}/{total}] {_order_label(row):<10} {out.status:<9} "
        f"{detail:<20} {_seconds(out.seconds):>6}  {row.planned.scenario.description}"
    )


def summary_table(rows: Sequence[Row]) -> str:
    headers = ("order", "customer", "outcome", "WHMCS order", "error code", "seconds", "scenario")
    body = [_summary_cells(row) for row in rows]
    lines = render_table(headers, body, right_aligned={5})
    for index, row in enumerate(rows):
        if not as_expected(row.planned.scenario, row.outcome):
            want = f"{row.planned.scenario.status} {row.planned.scenario.code}".strip()
            lines[index + 2] += f"   <- expected {want}"
    return "\n".join(lines)


def verdict_line(rows: Sequence[Row]) -> str:
    activated = sum(1 for r in rows if r.outcome.status == ACTIVATED)
    failed = sum(1 for r in rows if r.outcome.status == FAILED)
    pending = len(rows) - activated - failed
    wrong = sum(1 for r in rows if not as_expected(r.planned.scenario, r.outcome))
    counts = f"{len(rows)} orders: {activated} activated, {failed} failed"
    if pending:
        counts += f", {pending} without an outcome"
    if wrong:
        return f"{counts}. {wrong} did NOT end as the fixtures expect."
    return f"{counts}, every one as the fixtures expect."


def retry_hints(admin_url: str, rows: Sequence[Row]) -> str:
    """How to retry each failed order from the sandbox, and what it will take to succeed."""
    failed = [r for r in rows if r.outcome.status == FAILED]
    if not failed:
        return ""
    admin = admin_url.rstrip("/")
    lines = [
        'Retry a failed order with the sandbox\'s "Provision / Retry" (outcomes show up here):',
        f'  curl -s -X POST {admin}/admin/sf/retry -d \'{{"order_id": "<order id>"}}\'',
    ]
    for row in failed:
        out = row.outcome
        lines.append(f"  {out.order_id}  {out.number}  {out.error_code}: {_fix(admin, row)}")
    return "\n".join(lines)


def _fix(admin: str, row: Row) -> str:
    scenario = row.planned.scenario
    if scenario is NO_PAY_METHOD:
        client = next(c.client_id for c in CUSTOMERS if c.ref == row.planned.customer)
        card = {"type": "RemoteCreditCard", "gateway_name": "stripe", "description": "Visa"}
        body = json.dumps({"id": client, "paymethods": [card]})
        command = f"curl -s -X POST {admin}/admin/whmcs/set_client -d '{body}'"
        return f"give WHMCS client {client} a card first:\n      {command}"
    if scenario is UNMAPPED:
        return "fails again until its product has a WH_Product_ID__c"
    if scenario is WHMCS_DOWN:
        return (
            "WHMCS is back; the worker first waits out the unknown AddOrder outcome "
            "(the error message says until when)"
        )
    return f"unexpected; see the log file ({row.outcome.error_message})"


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right_aligned: set[int] = frozenset()
) -> list[str]:
    """Plain-text columns: header, a rule, then the rows."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i in right_aligned else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _summary_cells(row: Row) -> list[str]:
    out = row.outcome
    return [
        _order_label(row),
        row.customer,
        out.status or "(none)",
        out.whmcs_order_id or "-",
        out.error_code or "-",
        _seconds(out.seconds),
        row.planned.scenario.description,
    ]


def _order_label(row: Row) -> str:
    return row.outcome.number or row.planned.ref


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


class Progress:
    """Redraws one bar on a terminal; elsewhere prints a line as each order finishes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.reported: set[str] = set()

    def update(self, rows: Sequence[Row], elapsed: float) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + progress_bar(rows, elapsed))
        else:
            self._new_lines(rows)
        self.stream.flush()

    def finish(self, rows: Sequence[Row], elapsed: float) -> None:
        self.update(rows, elapsed)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _new_lines(self, rows: Sequence[Row]) -> None:
        for row in rows:
            if row.outcome.final and row.planned.ref not in self.reported:
                self.reported.add(row.planned.ref)
                self.stream.write(outcome_line(row, len(self.reported), len(rows)) + "\n")
