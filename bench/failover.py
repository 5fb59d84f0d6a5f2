"""`python -m bench.failover [--orders N]`: the Sentinel failover figures, measured by the real
failover test (tests/test_failover.py: a primary, a replica and three Sentinels of its own, the
sandbox, a subscriber and two workers) and written to bench/results/failover-latest.{json,md}.

It needs pytest (the dev extra) and redis-server; it touches no shared Redis database.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.results import RESULTS_DIR

TEST = "tests/test_failover.py"
ROOT = Path(__file__).resolve().parent.parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--orders", type=int, default=40, help="approvals in the stream")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between approvals")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as scratch:
        record = Path(scratch) / "failover.json"
        env = {
            **os.environ,
            "FAILOVER_RESULTS": str(record),
            "FAILOVER_ORDERS": str(args.orders),
            "FAILOVER_APPROVE_EVERY": str(args.every),
        }
        ran = subprocess.run(
            [sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider"],
            cwd=ROOT,
            env=env,
            check=False,
        )
        if not record.exists():
            print("bench.failover: the failover test recorded nothing", file=sys.stderr)
            return 1
        report = json.loads(record.read_text())
    report["test_passed"] = ran.returncode == 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failover-latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "failover-latest.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if ran.returncode == 0 else 1


def markdown(report: dict[str, Any]) -> str:
    rows = [
        ("approvals in the stream", report["orders"]),
        ("primary killed (kill -9) after approval", report["primary_killed_after"]),
        ("writes resumed after the kill", f"{report['writes_resumed_s']} s"),
        ("first later approval Activated after", f"{report['first_activation_after_kill_s']} s"),
        ("Activated", report["activated"]),
        ("Failed", len(report["failed"])),
        ("left Activating (lost to replication lag)", len(report["left_activating"])),
        ("of which no job in Redis", len(report["lost_jobs"])),
        (
            "stored replay id = last published",
            report["replay_stored"] == report["replay_published"],
        ),
    ]
    lines = ["| Sentinel failover | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
