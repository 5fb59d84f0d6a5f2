"""Measurement 6: what RQ's forking Worker costs per job against the non-forking alternatives.

Each variant drains the same pre-filled queue in burst mode; the per-job time is taken from the
in-job timestamps RQ records (start of one job to start of the next), so process start-up is
outside it. Pools report the time per job per process, comparable with a single worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rq import Queue
from rq.serializers import JSONSerializer

from bench import rqjobs
from bench.harness import REPO_ROOT, BenchError, Measurement, Row, Run, reset_database
from provisioner.kit.supervisor import Supervisor, python_module

QUEUE = "bench-workers"
SLEEP_MS = 50.0
SERIALIZER = "rq.serializers.JSONSerializer"


@dataclass(frozen=True)
class Variant:
    label: str
    command: str  # "worker" or "worker-pool"
    worker_class: str
    processes: int = 1
    slow: bool = False  # spawns an interpreter per job: fewer jobs keep the run short

    def args(self, redis_url: str) -> list[str]:
        common = ["-u", redis_url, "-S", SERIALIZER, "-w", self.worker_class, QUEUE]
        if self.command == "worker-pool":
            return ["rq.cli", "worker-pool", "-b", "-q", "-n", str(self.processes), *common]
        return ["rq.cli", "worker", "--burst", "-q", *common]


REFERENCE = Variant("SimpleWorker", "worker", "rq.worker.SimpleWorker")
VARIANTS = (
    REFERENCE,
    Variant("Worker (fork)", "worker", "rq.worker.Worker"),
    Variant("SpawnWorker", "worker", "rq.worker.SpawnWorker", slow=True),
    Variant("worker-pool -n 2, SimpleWorker", "worker-pool", "rq.worker.SimpleWorker", 2),
    Variant("worker-pool -n 2, Worker (fork)", "worker-pool", "rq.worker.Worker", 2),
)


@dataclass(frozen=True)
class Drain:
    variant: Variant
    jobs: int
    per_job: float  # seconds per job per process
    in_job: float  # mean seconds inside the job function

    @property
    def overhead_ms(self) -> float:
        return (self.per_job - self.in_job) * 1000

    @property
    def jobs_per_second(self) -> float:
        return self.variant.processes / self.per_job


def measure(run: Run) -> Measurement:
    result = Measurement(6, "worker_classes", "Worker class: per-job cost")
    conn = run.redis()
    trivial = {v.label: _drain(run, conn, v, "bench.sample_jobs.noop", None) for v in VARIANTS}
    sleepy = {
        v.label: _drain(run, conn, v, "bench.sample_jobs.sleep_ms", SLEEP_MS) for v in VARIANTS
    }
    reference = trivial[REFERENCE.label]
    # The fork's own cost per job, for the worker-class advice (recommend.py).
    run.shared["fork_extra_ms"] = (trivial["Worker (fork)"].per_job - reference.per_job) * 1000
    for drain in trivial.values():
        if drain is reference:
            result.rows.append(_row(drain, "trivial job"))
        else:
            same = f"{REFERENCE.label}, same job"
            result.rows.append(_row(drain, "trivial job", same, reference.per_job))
    result.rows += [
        _row(d, f"{SLEEP_MS:g} ms job", "time inside the job", d.in_job) for d in sleepy.values()
    ]
    result.params = {
        "trivial_jobs": {k: d.jobs for k, d in trivial.items()},
        "sleep_jobs": {k: d.jobs for k, d in sleepy.items()},
        "sleep_ms": SLEEP_MS,
    }
    result.notes = _notes(trivial, sleepy)
    return result


def _drain(run: Run, conn, variant: Variant, func: str, arg: float | None) -> Drain:  # type: ignore[no-untyped-def]
    reset_database(conn)
    count = _count(run, variant, sleeping=arg is not None)
    queue = Queue(QUEUE, connection=conn, serializer=JSONSerializer)
    ids = [f"w-{i}" for i in range(count)]
    jobs = [
        Queue.prepare_data(func, (i if arg is None else arg,), job_id=job_id, result_ttl=600)
        for i, job_id in enumerate(ids)
    ]
    queue.enqueue_many(jobs)
    log = run.work_dir / f"workers-{variant.command}-{variant.worker_class}.log"
    print(f"  6: {variant.label}, {count} x {func}", file=sys.stderr)
    _burst(python_module(*variant.args(run.redis_url)), log, timeout=60 + count * 0.5)
    times = rqjobs.fetch_times(conn, ids)
    bad = [t for t in times if t.status != "finished"]
    if bad:
        raise BenchError(f"{variant.label}: {len(bad)} jobs not finished, e.g. {bad[0]}")
    in_job = sum(t.in_job or 0.0 for t in times) / len(times)
    per_job = rqjobs.per_job_seconds(times, variant.processes)
    return Drain(variant, count, per_job, in_job)


def _burst(argv: list[str], log: Path, timeout: float) -> None:
    """Run a burst worker to its end; fail the measurement if it does not end well."""
    proc = Supervisor(os.environ, log, cwd=REPO_ROOT).start("burst", argv, {})
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{argv[2:5]} did not finish within {timeout:.0f}s") from None
    if code != 0:
        raise BenchError(f"{argv[2:5]} exited {code}; log tail:\n{proc.tail()}")


def _count(run: Run, variant: Variant, *, sleeping: bool) -> int:
    if sleeping:
        full, quick = (20, 4) if variant.slow else (40 * variant.processes, 8)
    elif variant.slow:
        full, quick = 30, 5
    elif "Simple" in variant.worker_class:
        full, quick = 800 * variant.processes, 40
    else:
        full, quick = 300 * variant.processes, 30
    return run.size(full, quick)


def _row(
    drain: Drain, job: str, reference: str = "", reference_seconds: float | None = None
) -> Row:
    figure = f"{drain.variant.label}: {job}, time per job per process"
    reference_ms = None if reference_seconds is None else reference_seconds * 1000
    return Row(figure, drain.per_job * 1000, "ms", reference, reference_ms)


def _notes(trivial: dict[str, Drain], sleepy: dict[str, Drain]) -> list[str]:
    notes = [
        "Overhead per job (time per job minus time inside it), trivial / "
        f"{SLEEP_MS:g} ms job, and jobs/s of the trivial job:"
    ]
    for label, drain in trivial.items():
        notes.append(
            f"{label}: {drain.overhead_ms:.1f} / {sleepy[label].overhead_ms:.1f} ms, "
            f"{drain.jobs_per_second:.0f} jobs/s with {drain.variant.processes} process(es)"
        )
    return notes
