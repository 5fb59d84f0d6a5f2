"""The default worker class, picked from this run's figures (measurements 3, 4 and 6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.harness import Measurement, Row, Target

# The fork Worker would be worth being the default while one order through it takes at most
# this much longer than through SimpleWorker: within it, isolation per order is worth the price.
FORK_LIMIT = Target(1.10)


def add_worker_class_advice(measured: Sequence[Measurement], shared: dict[str, Any]) -> None:
    six = next((m for m in measured if m.key == "worker_classes" and m.status == "ok"), None)
    if six is None:
        return
    order_ms = shared.get("order_ms")
    if not order_ms:
        six.notes.append(
            "Recommendation: none from this run; it needs measurement 3 (one order through "
            "each worker class)."
        )
        return
    row = Row(
        "our job: one order end to end, fork Worker (from 3)",
        order_ms["fork"],
        "ms",
        "SimpleWorker, same kind of order (from 3)",
        order_ms["simple"],
        FORK_LIMIT,
    )
    six.rows.append(row)
    six.notes.append(advice(row, shared.get("fork_extra_ms"), shared.get("at_4")))


def advice(
    row: Row, trivial_extra_ms: float | None, at_4: dict[str, dict[str, float]] | None
) -> str:
    extra = row.value - (row.reference_value or 0.0)
    facts = [
        f"one order takes {abs(extra):.0f} ms {'longer' if extra >= 0 else 'less'} through the "
        f"fork Worker than through SimpleWorker ({row.ratio:.2f}x)"
    ]
    if trivial_extra_ms is not None:
        facts.append(f"a fork alone costs about {trivial_extra_ms:.0f} ms per job (trivial job)")
    if at_4:
        fork, simple = at_4["fork"], at_4["simple"]
        facts.append(
            f"the worker processes spend {fork['worker_cpu_ms']:.0f} ms of CPU per order with "
            f"fork against {simple['worker_cpu_ms']:.0f} ms with SimpleWorker (4 processes: "
            f"{fork['orders_per_second']:.1f} against {simple['orders_per_second']:.1f} orders/s "
            "on this shared machine)"
        )
    measured = "; ".join(facts) + "."
    if row.met:
        return (
            f"Recommendation: make the fork Worker (`--worker-class fork`) the default again. "
            f"Measured: {measured} That is within {FORK_LIMIT.limit:g}x, and for it every order "
            "runs in a fresh process with fresh connections: a leak, a crash in native code or a "
            "stale kept-alive connection cannot reach the next order."
        )
    return (
        f"Recommendation: keep SimpleWorker as the default (`python -m worker`; "
        f"`--worker-class fork` for the fork Worker). Measured: {measured} The rest of the "
        "fork's price is per-order reconnection: "
        "a work horse cannot inherit sockets, so each order opens new TLS connections to "
        "Salesforce and WHMCS and new Redis and database connections (see the step "
        "breakdown in 3); over a WAN each TLS handshake costs extra round trips, so the gap "
        "grows in production. What the fork buys is isolation, and this design already covers "
        "the failures it would contain: a job that crashes the process leaves its order to the "
        "lease reaper (Failed, WORKER_LOST) and the process to the restart policy; job "
        "timeouts still fire inside the job (SIGALRM); every call has its own timeout. Keep "
        "the fork Worker where isolation matters more than a "
        f"{row.ratio:.1f}x slower order, e.g. while running untrusted or leaking native code."
    )
