"""`python -m bench.chaos [--quick] [--seed N]`: orders through kills, restarts and faults, checked.

Real processes (one subscriber, several workers, under a supervisor that restarts what dies)
against the sandbox, a private Redis with append-only persistence and a fresh PostgreSQL database.
Orders have lines of 1 to 3 units of products of every WHMCS allowqty. While the orders are
approved, a seeded schedule kills, restarts and crashes, revokes, approves without publishing,
Retries Activated orders, refuses outcome PATCHes for a while and injects faults. After the
abandoned-job window the run checks the promise, retries every Failed order once with the faults
cleared (one round: the promise), checks again, and prints the fault table. Exit 0 only when every
check passes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.chaos import promise as chaos_check
from bench.chaos import report as chaos_report
from bench.chaos import state as chaos_state
from bench.chaos.inject import REFUSED_CODE, FireLog, Injection, Injector, MintLog, Timeline
from bench.chaos.schedule import BY_KEY, plan
from bench.chaos.stage import ChaosStack, Tuning, worker_class
from bench.results import DEFAULT_DATABASE_URL, RESULTS_DIR, write_atomically
from sandbox.http_server import wait_until
from shared import keys
from shared.queueing import provisioning_queue
from worker.orchestrator import UNKNOWN_CREATE_MARGIN

QUEUE = "provisioning"
RETRY_ROUNDS = 1  # the promise: one Provision / Retry activates every Failed order


@dataclass(frozen=True)
class Size:
    orders: int
    clients: int
    workers: int
    load_seconds: float
    settle_timeout: float
    refuse_seconds: float  # how long Salesforce refuses outcome PATCHes
    quick: bool = False


FULL = Size(
    orders=300, clients=12, workers=3, load_seconds=75, settle_timeout=180, refuse_seconds=12
)
QUICK = Size(
    orders=50,
    clients=4,
    workers=2,
    load_seconds=30,
    settle_timeout=90,
    refuse_seconds=8,
    quick=True,
)


class Clock:
    """Seconds since the run started (monotonic)."""

    def __init__(self) -> None:
        self.origin = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.origin


def say(text: str) -> None:
    print(f"chaos: {text}", file=sys.stderr, flush=True)


class Chaos:
    def __init__(self, rig: ChaosStack, size: Size, seed: int, clock: Clock, command: str) -> None:
        self.rig = rig
        self.size = size
        self.seed = seed
        self.clock = clock
        self.timeline = Timeline()
        self.fires = FireLog(rig.sandbox.faults, clock)
        self.tokens = MintLog(rig.sandbox.salesforce.tokens)
        self.approved: list[str] = []
        rng = random.Random(seed + 1)
        self.injector = Injector(rig, clock, rng, size.refuse_seconds, self.approved)
        self.info = chaos_report.RunInfo(
            command=command,
            seed=seed,
            orders=size.orders,
            workers=size.workers,
            worker_classes=_classes(size.workers),
            clients=size.clients,
            load_seconds=size.load_seconds,
            settings={k: v for k, v in rig.tuning.env().items() if k != "HTTP_CONNECT_TIMEOUT"},
        )
        self.expected: dict[str, dict[int, tuple[int, int]]] = {}

    # --- the run ---

    def run(self) -> tuple[str, bool]:
        self.expected = self.rig.load(self.size.orders, self.size.clients)
        self.rig.start_services(self.size.workers)
        if not self.rig.wait_subscribed():
            raise RuntimeError("the subscriber did not connect within 60 s")
        self._phase("load", lambda: self._load(list(self.expected)))
        self._phase("settle", self._settle_after_faults)
        first = self._world()
        self._phase("retry", lambda: self._retry(first))
        final = self._world()
        facts = self._facts()
        self.info.reconciled = sum(1 for o in self.approved if final.reconciled(o))
        checks = {
            "After the faults": chaos_check.after_faults(first, facts),
            "After one round of Provision / Retry of every Failed order": [
                *chaos_check.after_retry(final, facts),
                self._secrets_check(),
            ],
        }
        rows = self._fault_rows(first, final)
        for line in chaos_report.summary_lines(checks):
            say(line)
        text = chaos_report.markdown(self.info, rows, checks, self.rig.supervisor.restarts)
        return text, chaos_report.all_passed(*checks.values())

    def _phase(self, name: str, body: Any) -> None:
        started = self.clock()
        say(f"{name} phase")
        body()
        self.info.seconds[name] = self.clock() - started

    def _load(self, order_ids: Sequence[str]) -> None:
        schedule = plan(
            self.seed, self.size.load_seconds, self.size.quick, self.rig.tuning.sf_events_transport
        )
        start = self.clock()
        striker = threading.Thread(target=self._strike, args=(schedule, start), daemon=True)
        striker.start()
        interval = self.size.load_seconds / len(order_ids)
        for n, order_id in enumerate(order_ids):
            _sleep_until(self.clock, start + n * interval)
            publish = not self.injector.claim_unpublished(order_id)
            self.rig.admin.approve(order_id, publish=publish)
            if publish:  # no event, nothing for a stream fault to hit
                self.timeline.add(self.clock(), order_id)
            self.approved.append(order_id)
        striker.join()
        self.injector.wait_for_recoveries()

    def _strike(self, schedule: Sequence[Any], start: float) -> None:
        for planned in schedule:
            _sleep_until(self.clock, start + planned.at)
            injection = self.injector.inject(planned.kind)
            say(f"t={injection.at:5.1f}s {BY_KEY[planned.kind].label}: {injection.detail}")

    def _settle_after_faults(self) -> None:
        kills = [i.at for i in self.injector.injections if i.kind == "kill_worker"]
        if kills:
            _sleep_until(self.clock, max(kills) + self.rig.tuning.abandoned_window)
        if not self._settle(self.size.settle_timeout):
            self.info.notes.append(
                f"Not settled within {self.size.settle_timeout:g} s after the load phase."
            )

    def _settle(self, timeout: float) -> bool:
        return wait_until(self._quiet, timeout, 1.0)

    def _quiet(self) -> bool:
        """No approved order is Activating and no job is queued or running."""
        statuses = {o["Id"]: o.get("Activation_Status__c") for o in self.rig.admin.orders()}
        if any(statuses.get(o) == "Activating" for o in self.approved):
            return False
        try:
            with self.rig.conn() as conn:
                queue = provisioning_queue(conn, QUEUE, 60)
                return queue.count == 0 and conn.hlen(keys.INFLIGHT) == 0
        except redis.RedisError:  # not back yet: not quiet
            return False

    def _retry(self, first: chaos_check.World) -> None:
        self.rig.sandbox.faults.clear()
        self._wait_out_unknown_creates()
        for round_ in range(1, RETRY_ROUNDS + 1):
            statuses = {o["Id"]: o.get("Activation_Status__c") for o in self.rig.admin.orders()}
            failed = [o for o in self.approved if statuses.get(o) == "Failed"]
            if not failed:
                break
            say(f"retry round {round_}: Provision / Retry of {len(failed)} Failed orders")
            for order_id in failed:
                self.rig.admin.retry(order_id)
            self.info.retry_rounds, self.info.retried = round_, self.info.retried + len(failed)
            self._settle(self.size.settle_timeout)
        failed_first = sum(1 for o in self.approved if first.status(o) == "Failed")
        say(f"retried {failed_first} orders in {self.info.retry_rounds} round(s)")

    def _wait_out_unknown_creates(self) -> None:
        """An AddOrder with no known outcome blocks a new one for write timeout + margin (the
        worker's guard against ordering twice): retry after it, as the error message says. Kills
        and the Redis restart can leave such an AddOrder too."""
        moments = [
            self.fires.when(i.fault) if i.fault is not None else i.at
            for i in self.injector.injections
            if i.kind.startswith("add_")
            or i.kind in ("kill_worker", "restart_redis", "crash_redis")
        ]
        moments = [t for t in moments if t is not None]
        if moments:
            window = self.rig.tuning.whmcs_write_timeout + UNKNOWN_CREATE_MARGIN.total_seconds()
            _sleep_until(self.clock, max(moments) + window + 2.0)

    # --- reading the outcome ---

    def _facts(self) -> chaos_check.Facts:
        unpublished = {
            o for i in self.injector.injections if i.kind == "unpublished" for o in i.hit
        }
        return chaos_check.Facts(
            expected=self.expected,
            unpublished=frozenset(unpublished),
            kept=self.injector.retried_activated(),
            redis_crashed=any(i.kind == "crash_redis" for i in self.injector.injections),
            retry_rounds=self.info.retry_rounds,
        )

    def _world(self) -> chaos_check.World:
        with self.rig.conn() as conn:
            return chaos_state.gather(self.rig.admin, conn, self.rig.database.engine, self.approved)

    def _secrets_check(self) -> chaos_check.Check:
        """Every service log line and every field written to Salesforce, searched verbatim."""
        env = self.rig.env()
        secrets = {
            "WHMCS identifier": env["WHMCS_API_IDENTIFIER"],
            "WHMCS secret": env["WHMCS_API_SECRET"],
            "Redis password": self.rig.redis.password,
            **{f"Salesforce token #{n}": t for n, t in enumerate(self.tokens.minted, 1)},
        }
        patches = self.rig.work_dir / "salesforce-patches.json"
        patches.write_text(json.dumps(self.rig.admin.patches()))
        searched = [*self.rig.logs(), patches]
        found = chaos_state.secrets_in_logs(searched, secrets)
        return chaos_check.Check(
            "no secret or token in any log line or Salesforce field",
            not found,
            f"{len(searched) - 1} service logs and {len(self.rig.admin.patches())} Salesforce "
            f"updates searched for {len(secrets)} secrets and tokens"
            if not found
            else f"found: {', '.join(found[:5])}",
            tuple(found),
        )

    def _fault_rows(
        self, first: chaos_check.World, final: chaos_check.World
    ) -> list[chaos_report.FaultRow]:
        logs = self.rig.logs()
        seen = chaos_report.Seen(
            whmcs_hits=chaos_state.whmcs_fault_hits(self.rig.admin),
            duplicates=chaos_state.duplicate_deliveries(logs),
            refused=chaos_state.refused_outcomes(logs, REFUSED_CODE),
        )

        def orders_hit(injection: Injection) -> set[str]:
            fired = self.fires.when(injection.fault)
            return chaos_report.hits(injection, fired, self.timeline.between, seen)

        return chaos_report.fault_rows(
            self.injector.injections, lambda i: self.fires.when(i.fault), orders_hit, first, final
        )


def _classes(workers: int) -> str:
    kinds = Counter(worker_class(n) for n in range(1, workers + 1))
    return ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items(), reverse=True))


def _sleep_until(clock: Clock, moment: float) -> None:
    delay = moment - clock()
    if delay > 0:
        time.sleep(delay)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    size = QUICK if args.quick else FULL
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    command = "python -m bench.chaos" + (" --quick" if args.quick else "")
    command += f" --transport {args.transport}" if args.transport != "cometd" else ""
    say(f"seed {seed} (reproduce the schedule with --seed {seed})")
    work_dir = Path(tempfile.mkdtemp(prefix="chaos-"))
    clock = Clock()
    rig = ChaosStack(work_dir, args.database_url, Tuning(sf_events_transport=args.transport), clock)
    try:
        text, passed = Chaos(rig, size, seed, clock, command).run()
    finally:
        rig.close()
    print(text)
    path = _write(text, args.out, args.quick, args.transport)
    say(f"wrote {path}")
    if passed and not args.keep:
        shutil.rmtree(work_dir, ignore_errors=True)
    else:
        say(f"logs kept in {work_dir / 'logs'}")
    return 0 if passed else 1


def _write(text: str, out: Path, quick: bool, transport: str = "cometd") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if transport == "cometd" else f"-{transport}"
    path = out / (f"chaos-quick{suffix}-latest.md" if quick else f"chaos{suffix}-latest.md")
    write_atomically(path, text)
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50 orders, fewer faults: for CI")
    parser.add_argument("--seed", type=int, help="the fault schedule's seed (default: random)")
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="PostgreSQL server on which the run creates (and drops) its own database "
        "(default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the table is written")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    parser.add_argument(
        "--transport",
        choices=("cometd", "pubsub"),
        default="cometd",
        help="the subscriber's SF_EVENTS_TRANSPORT, with that transport's stream faults "
        "(default: %(default)s; `make chaos` passes SF_EVENTS_TRANSPORT)",
    )
    return parser
