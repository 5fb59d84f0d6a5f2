"""The chaos run's report: which orders each fault hit and what became of them, and the checks.

Pure functions over what the run recorded; `markdown()` is what `make chaos` prints and writes to
bench/results/chaos-latest.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.chaos.inject import Injection
from bench.chaos.promise import Check, World, outcome
from bench.chaos.schedule import BY_KEY, STREAM_KINDS, STREAM_TARGETS, kinds
from provisioner.kit.supervisor import Respawn

# CometD faults strike a connect; orders approved around it rode on the faulted exchange or on
# the re-handshake after it.
STREAM_WINDOW = (-0.5, 2.0)


@dataclass(frozen=True)
class FaultRow:
    label: str
    injected: int
    fired: int
    hit: frozenset[str]
    then: str  # outcomes of the orders hit, after the faults
    after_retry: str


@dataclass
class RunInfo:
    command: str
    seed: int
    orders: int
    workers: int
    worker_classes: str
    clients: int
    load_seconds: float
    settings: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> duration
    retry_rounds: int = 0
    retried: int = 0
    reconciled: int = 0  # orders the reconciler gave a job
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Seen:
    """What the sandbox and the services' logs say was struck, for `hits`."""

    whmcs_hits: Mapping[tuple[str, str], set[str]]  # (action, fault kind) -> orders
    duplicates: set[str] = field(default_factory=set)  # events received twice (their orders)
    refused: set[str] = field(default_factory=set)  # orders whose outcome PATCH was refused


def hits(
    injection: Injection,
    fired_at: float | None,
    between: Callable[[float, float], set[str]],
    seen: Seen,
) -> set[str]:
    """The orders a fault hit: exact for WHMCS faults, kills and revocations (in flight at the
    moment), by time window for the stream (approved while the subscriber was away); for the
    refused outcome window, the orders whose outcome PATCH was refused, and the one made to fail
    in it; for an unpublished approval or a Retry on an Activated order, that order."""
    kind = BY_KEY[injection.kind]
    if kind.target.startswith("whmcs."):
        return set(seen.whmcs_hits.get((kind.target.split(".", 1)[1], kind.fault), set()))
    if injection.kind == "refuse_outcome":
        return seen.refused | seen.whmcs_hits.get(("AddOrder", "error"), set())
    found = set(injection.hit)
    if injection.window:
        found |= between(injection.window[0], injection.window[1])
    if kind.target.startswith(STREAM_TARGETS) and fired_at is not None:
        found |= between(fired_at + STREAM_WINDOW[0], fired_at + STREAM_WINDOW[1])
    if kind.fault == "duplicate":
        found |= seen.duplicates
    return found


def fault_rows(
    injections: Sequence[Injection],
    fired: Callable[[Injection], float | None],
    orders_hit: Callable[[Injection], set[str]],
    after_faults: World,
    after_retry: World,
) -> list[FaultRow]:
    rows = []
    for kind in (*kinds(), *STREAM_KINDS["pubsub"]):  # rows only for kinds injected
        mine = [i for i in injections if i.kind == kind.key]
        if not mine:
            continue
        hit: set[str] = set().union(*(orders_hit(i) for i in mine))
        took = sum(1 for i in mine if (fired(i) is not None if kind.emulated else i.took))
        rows.append(
            FaultRow(
                kind.label,
                len(mine),
                took,
                frozenset(hit),
                summarise(after_faults, hit),
                summarise(after_retry, {o for o in hit if after_faults.status(o) == "Failed"}),
            )
        )
    return rows


def summarise(world: World, orders: Iterable[str]) -> str:
    counts = Counter(outcome(world, o) for o in orders)
    if not counts:
        return "-"
    return ", ".join(f"{n} {what}" for what, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def all_passed(*groups: Iterable[Check]) -> bool:
    return all(check.ok for group in groups for check in group)


def markdown(
    info: RunInfo,
    rows: Sequence[FaultRow],
    checks: Mapping[str, Sequence[Check]],
    restarts: Sequence[Respawn],
) -> str:
    verdict = "PASS" if all_passed(*checks.values()) else "FAIL"
    parts = [
        f"## Chaos run: {verdict}",
        "",
        f"`{info.command}` with seed {info.seed}: {info.orders} orders for {info.clients} "
        f"WHMCS clients approved over {info.load_seconds:g} s, {info.workers} workers "
        f"({info.worker_classes}), 1 subscriber. Phases: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in info.seconds.items())
        + ".",
        "",
        "Settings: " + ", ".join(f"`{k}={v}`" for k, v in info.settings.items()) + ".",
        "",
        *_fault_table(rows),
        "",
        *_restart_lines(restarts),
        "",
        f"Provision / Retry: {info.retried} Failed orders retried in {info.retry_rounds} "
        f"round(s) (the promise: one round). The reconciler gave {info.reconciled} orders a job.",
    ]
    for title, group in checks.items():
        parts += ["", f"### {title}", "", "| check | result | detail |", "|---|---|---|"]
        parts += [f"| {c.name} | {'ok' if c.ok else 'FAILED'} | {c.detail} |" for c in group]
    if info.notes:
        parts += ["", *[f"- {note}" for note in info.notes]]
    return "\n".join(parts) + "\n"


def _fault_table(rows: Sequence[FaultRow]) -> list[str]:
    lines = [
        "| fault | injected | took effect | orders hit | then | after retry |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.label} | {r.injected} | {r.fired} | {len(r.hit)} | {r.then} | {r.after_retry} |"
        for r in rows
    ]
    lines += [
        "",
        "Orders hit: WHMCS faults, the calls they struck; kills, the Redis restart and crash and "
        "the token revocation, the orders in flight at that moment plus those approved until the "
        "subscriber's next successful connect; stream faults (CometD or Pub/Sub), the orders "
        "approved from 0.5 s before to 2 s after the fault fired (and, for duplicates, every "
        "event the subscriber logged as received twice); an approval never published and a Retry "
        "on an Activated order, that order; the refused outcome PATCH, every order whose outcome "
        "Salesforce refused (the workers logged it kept for delivery) and the order made to fail "
        "meanwhile. An order can be hit by several faults. "
        '"after retry": the Failed ones among them after Provision / Retry.',
    ]
    return lines


def _restart_lines(restarts: Sequence[Respawn]) -> list[str]:
    causes = Counter(r.cause for r in restarts)
    if not causes:
        return ["The supervisor restarted nothing."]
    listed = ", ".join(f"{n}x {cause}" for cause, n in sorted(causes.items()))
    return [f"The supervisor restarted services {len(restarts)} times: {listed}."]


def summary_lines(checks: Mapping[str, Sequence[Check]]) -> list[str]:
    """One line per check for the terminal."""
    return [
        f"{'ok    ' if c.ok else 'FAILED'} {title}: {c.name}: {c.detail}"
        for title, group in checks.items()
        for c in group
    ]
