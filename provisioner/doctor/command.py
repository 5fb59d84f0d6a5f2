"""`provisioner doctor [--order ID] [--json]`: the runbook's checklist, walked by the software.

Exit status 1 when any line failed, so scripts and CI can gate on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import TextIO

from provisioner.doctor import checks, order_checks
from provisioner.doctor.checklist import Verdict, load_context, run_checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--order", metavar="ORDER_ID", help="diagnose one Salesforce Order")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")


def run(args: argparse.Namespace) -> int:
    ctx = load_context()
    try:
        results = run_checks(ctx, checks.CHECKS)
        if args.order:
            results += run_checks(ctx, order_checks.checks(args.order))
    finally:
        ctx.close()
    render(results, as_json=args.json, out=sys.stdout)
    return 0 if all(r.ok for r in results) else 1


def render(results: list[Verdict], *, as_json: bool, out: TextIO) -> None:
    failures = sum(not r.ok for r in results)
    if as_json:
        body = {"ok": failures == 0, "checks": [{"name": r.name, **asdict(r)} for r in results]}
        json.dump(body, out, indent=2)
        out.write("\n")
        return
    for r in results:
        out.write(f"[{'PASS' if r.ok else 'FAIL'}] {r.name}: {_indent(r.detail)}\n")
        if not r.ok and r.fix:
            out.write(f"       fix: {_indent(r.fix)}\n")
    out.write(f"\n{len(results) - failures} passed, {failures} failed\n")


def _indent(text: str) -> str:
    return text.replace("\n", "\n       ")
