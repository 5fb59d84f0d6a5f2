"""`python -m bench [--quick]`: measure the pipeline against its limits; write bench/results/."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import (
    economy,
    enqueue,
    latency,
    orchestration,
    recommend,
    scaling,
    scrape,
    transports,
    workers,
)
from bench.harness import (
    BenchError,
    Measurement,
    Run,
    Skipped,
    claim_bench_database,
    reset_database,
)
from bench.results import DEFAULT_DATABASE_URL, RESULTS_DIR, document, machine, markdown, write
from shared.logs import configure_logging

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"


@dataclass(frozen=True)
class Spec:
    number: int
    key: str
    title: str
    measure: Callable[[Run], Measurement]


SPECS = (
    Spec(1, "enqueue", "Enqueue path", enqueue.measure),
    Spec(2, "latency", "Publish to enqueue latency", latency.measure),
    Spec(3, "orchestration", "Orchestration overhead", orchestration.measure),
    Spec(4, "scaling", "Scaling with worker processes", scaling.measure),
    Spec(5, "economy", "API economy", economy.measure),
    Spec(6, "worker_classes", "Worker class: per-job cost", workers.measure),
    Spec(7, "metrics_scrape", "/metrics scrape over a large history", scrape.measure),
    Spec(8, "transports", "Event transports side by side", transports.measure),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    wanted = {int(n) for n in args.only.split(",")} if args.only else None
    command = "python -m bench" + (" --quick" if args.quick else "")
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        run = Run(args.redis_url, args.database_url, args.quick, Path(scratch), command)
        conn = run.redis()
        try:
            claim_bench_database(run.redis_url)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        machine_info = machine(conn)
        measured = _measure_all(run, wanted)
        reset_database(conn)
    recommend.add_worker_class_advice(measured, run.shared)
    machine_info["database"] = run.shared.get("database", "not used")
    doc = document(sorted(measured, key=lambda m: m.number), machine_info, command, args.quick)
    paths = write(doc, args.out)
    print(markdown(doc))
    print(f"bench: wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 1 if any(m.status == "error" for m in measured) else 0


def _measure_all(run: Run, wanted: set[int] | None) -> list[Measurement]:
    # The code under measurement logs as in production (JSON, INFO), but not to the console.
    with open(os.devnull, "w") as devnull:
        configure_logging("INFO", "bench", stream=devnull)
        try:
            return [_attempt(s, run) for s in SPECS if wanted is None or s.number in wanted]
        finally:
            run.close()  # the sandbox and the bench's database, even on Ctrl-C


def _attempt(spec: Spec, run: Run) -> Measurement:
    print(f"bench: {spec.number}. {spec.title}", file=sys.stderr)
    started = time.monotonic()
    try:
        result = spec.measure(run)
    except Skipped as exc:
        result = Measurement(spec.number, spec.key, spec.title, status="skipped", reason=str(exc))
    except Exception as exc:  # one broken measurement must not cost the others
        print(traceback.format_exc(), file=sys.stderr)
        reason = f"{type(exc).__name__}: {exc}"
        result = Measurement(spec.number, spec.key, spec.title, status="error", reason=reason)
    finally:
        reset_database(run.redis())
    result.seconds = time.monotonic() - started
    print(f"bench: {spec.number}. {result.status} in {result.seconds:.1f}s", file=sys.stderr)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run for CI")
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help="a Redis database for the bench alone; it is emptied (default: %(default)s)",
    )
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="PostgreSQL server on which the bench creates (and drops) its own database; "
        "'sqlite' for a SQLite file (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--only", default="", help="comma-separated measurement numbers")
    return parser


if __name__ == "__main__":
    sys.exit(main())
