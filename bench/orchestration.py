"""Measurement 3: one order's wall time against the sum of its backend latencies.

Every Salesforce and WHMCS call gets the same fixed latency in the sandbox; orders go through the
real pipeline one at a time (approve -> subscriber -> one `python -m worker`), and the emulators
count the delays they applied while the order ran. Done with SimpleWorker (the default: the
target) and with the fork Worker, whose figures feed the worker-class advice of measurement 6.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.harness import BenchError, Measurement, Row, Run, Target, median, percentile
from bench.rig import Rig, calls_between
from provisioner.kit.supervisor import stop_together
from shared.config import load_settings
from shared.http import TimeoutSession
from shared.salesforce import SalesforceClient
from shared.sfauth import TokenProvider
from shared.whmcs import WhmcsClient

LATENCY = 0.020  # seconds per backend call
TARGET = Target(1.15)


@dataclass(frozen=True)
class Order:
    in_job: float  # seconds inside the RQ job
    end_to_end: float  # approve call -> job finished
    latency_sum: float  # seconds of injected latency while it ran
    calls: int


def measure(run: Run) -> Measurement:
    rig = Rig.of(run)
    result = Measurement(3, "orchestration", "Orchestration overhead")
    count = run.size(25, 3)
    batches = {cls: _orders(rig, cls, count) for cls in ("fork", "simple")}
    bare = _bare_calls(rig, run.size(40, 5))
    per_class = {cls: orders for cls, (orders, _) in batches.items()}
    fork, simple = per_class["fork"], per_class["simple"]
    in_job = {cls: median([o.in_job for o in orders]) for cls, orders in per_class.items()}
    end_to_end = {cls: median([o.end_to_end for o in orders]) for cls, orders in per_class.items()}
    floor = _floor(batches["simple"][1], bare)
    result.rows = [
        _row("one order in the job, SimpleWorker (default)", in_job["simple"], simple, TARGET),
        _row("one order in the job, fork Worker", in_job["fork"], fork),
        _row("floor: the same backend calls made alone on warm connections", floor, simple),
        _row(
            "one order end to end (approve -> job finished), SimpleWorker",
            end_to_end["simple"],
            simple,
        ),
    ]
    run.shared["order_ms"] = {cls: seconds * 1000 for cls, seconds in end_to_end.items()}
    result.params = {"orders_per_class": count, "latency_ms_per_call": LATENCY * 1000}
    calls = {cls: c for cls, (_, c) in batches.items()}
    steps = {cls: rig.step_medians(ids) for cls, ids in run.shared.pop("measured_orders").items()}
    result.notes = [*_notes(per_class, calls, steps), _against_floor(result.rows)]
    return result


def _against_floor(rows: list[Row]) -> str:
    simple, fork, floor = rows[0], rows[1], rows[2]
    allowed = TARGET.limit * (floor.reference_value or 0.0)
    return (
        f"Bare calls on warm connections already take {floor.ratio:.2f}x their latency here "
        f"(TLS, HTTP and the Python emulators), so the {TARGET.limit:g}x target leaves "
        f"{allowed - floor.value:.0f} ms per order for everything else. Beyond that floor the "
        f"job spends {simple.value - floor.value:.0f} ms with SimpleWorker and "
        f"{fork.value - floor.value:.0f} ms with the fork Worker; the step breakdowns above "
        "show where (with fork, mostly the first call to each backend: a new connection)."
    )


def _orders(rig: Rig, worker_class: str, count: int) -> tuple[list[Order], dict[str, float]]:
    """`count` orders one at a time, after one warm-up order (token mint, product cache);
    with the backend calls per order by kind, warm-up included."""
    order_ids = rig.new_orders(count + 1)
    rig.run.shared.setdefault("measured_orders", {})[worker_class] = order_ids[1:]
    rig.set_latency(LATENCY)
    procs = [rig.start_subscriber()]
    print(f"  3: {count} orders, {worker_class} worker", file=sys.stderr)
    try:
        procs += rig.start_workers(1, worker_class)
        before = rig.admin.counters()
        orders = [_one(rig, order_id) for order_id in order_ids]
        after = rig.admin.counters()
    finally:
        rig.clear_latency()
        stop_together(procs)
    activated = rig.activated(order_ids)
    if activated != len(order_ids):
        raise BenchError(f"{worker_class}: {activated} of {len(order_ids)} orders Activated")
    calls = calls_between(before, after)
    return orders[1:], {kind: n / len(order_ids) for kind, n in sorted(calls.items())}


def _one(rig: Rig, order_id: str) -> Order:
    calls_before, latency_before = rig.delays.snapshot()
    started = time.time()
    job = rig.approve(order_id)
    (times,) = rig.wait_jobs([job], timeout=60)
    calls_after, latency_after = rig.delays.snapshot()
    if times.status != "finished" or times.in_job is None or times.ended_at is None:
        raise BenchError(f"order {order_id}: job {job} ended {times.status}")
    return Order(
        times.in_job,
        times.ended_at - started,
        latency_after - latency_before,
        calls_after - calls_before,
    )


def _bare_calls(rig: Rig, count: int) -> dict[str, float]:
    """Median seconds of one call made alone on a warm connection, per system, with the latency
    on: the emulator's and HTTP's own share of a call, which no orchestration can avoid."""
    env = rig.stack.env()
    settings = load_settings(env, ("salesforce", "whmcs"))
    order_id = rig.new_orders(1)[0]

    def session() -> TimeoutSession:
        made = TimeoutSession(settings.connect_timeout, settings.salesforce.timeout)
        # In-process the sandbox's CA is given explicitly; with trust_env off, a
        # REQUESTS_CA_BUNDLE in the bench's own environment cannot replace it.
        made.trust_env = False
        made.verify = env["REQUESTS_CA_BUNDLE"]
        return made

    tokens = TokenProvider(settings.salesforce, rig.conn, session())
    salesforce = SalesforceClient(settings.salesforce, tokens, session())
    whmcs = WhmcsClient(settings.whmcs, session())
    calls = {
        "sf": lambda: salesforce.query(f"SELECT Id, Status FROM Order WHERE Id = '{order_id}'"),
        "whmcs": lambda: whmcs.get_pay_methods(1),
    }
    rig.set_latency(LATENCY)
    try:
        return {system: _median_call(call, count) for system, call in calls.items()}
    finally:
        rig.clear_latency()
        salesforce.close()
        whmcs.close()


def _median_call(call: Callable[[], object], count: int) -> float:
    call()  # connect, and (Salesforce) take the token
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        durations.append(time.perf_counter() - started)
    return median(durations)


def _floor(calls: dict[str, float], bare: dict[str, float]) -> float:
    """One order's backend calls, each at its system's bare call time."""
    return sum(n * bare[kind.split(".", 1)[0]] for kind, n in calls.items())


def _row(figure: str, seconds: float, orders: list[Order], target: Target | None = None) -> Row:
    """`seconds` against the median sum of the orders' backend latencies, both in ms."""
    latency = median([o.latency_sum for o in orders]) * 1000
    return Row(
        figure, seconds * 1000, "ms", "sum of its backend latencies (median)", latency, target
    )


def _notes(
    per_class: dict[str, list[Order]],
    calls: dict[str, dict[str, float]],
    steps: dict[str, dict[str, float]],
) -> list[str]:
    notes = [
        f"{LATENCY * 1000:.0f} ms injected on every Salesforce and WHMCS call; figures are "
        "medians over the orders after one warm-up order per worker class. 'In the job' is "
        "RQ's started_at to ended_at; end to end adds CometD delivery, the intake, the "
        "dequeue and (fork) the work horse."
    ]
    for cls, orders in per_class.items():
        ratios = [o.in_job / o.latency_sum for o in orders if o.latency_sum]
        kinds = ", ".join(f"{k} {v:.2g}" for k, v in calls[cls].items())
        in_steps = sum(steps[cls].values())
        outside = median([o.in_job for o in orders]) * 1000 - in_steps
        breakdown = ", ".join(f"{k} {v:.0f}" for k, v in steps[cls].items())
        notes.append(
            f"{cls}: backend calls per order {median([o.calls for o in orders]):g} ({kinds}); "
            f"in-job / latency ratio p90 {percentile(ratios, 90):.2f}, max {max(ratios):.2f}; "
            f"median ms per step (the worker's own fulfilment_steps records): {breakdown}; "
            f"outside the steps (clients, lease, records) ~{outside:.0f} ms."
        )
    return notes
