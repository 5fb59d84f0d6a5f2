"""`provisioner demo`: the whole flow on this machine, against the sandbox, in under a minute.

Redis is REDIS_URL if it answers, else a private server from a wheel; the database is SQLite; the
Salesforce and WHMCS emulators run inside this process (they stand in for SaaS, not for our
services). The subscriber, two workers and the health app run as real processes, started exactly
as production starts them. Everything lives under `.demo/` of the current directory and every
process this command starts is stopped when it ends, on Ctrl-C or SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TextIO

import requests

from provisioner.demo import plan as demo_plan
from provisioner.demo.plan import WHMCS_DOWN, PlannedOrder, outcome_from_record, sf_time
from provisioner.demo.view import Progress, Row, retry_hints, summary_table, verdict_line
from provisioner.kit.database import Database, release_database
from provisioner.kit.private_redis import PrivateRedisError, configured_or_private
from provisioner.kit.stack import NotReady, Stack
from provisioner.kit.supervisor import Supervisor, free_port, kill_leftovers
from sandbox.client import SandboxAdminError
from shared.config import Settings
from shared.logs import configure_logging
from shared.startup import start

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 40.0  # seconds for every service to report ready
POLL_INTERVAL = 0.2
WORKERS = 2
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
# Set by the demo, to its pid, in a database it has flushed: once that demo has ended the next one
# may flush it again. A database without it that holds keys belongs to someone else.
DEMO_MARKER = "provisioner:demo"


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and where to look."""


TRANSPORTS = {
    "cometd": "CometD (Streaming API)",
    "pubsub": "the Pub/Sub API (gRPC)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--orders", type=_positive, default=20, help="orders to approve (20)")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave everything up after the summary, to explore and retry; Ctrl-C stops it",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for every outcome (60)"
    )
    parser.add_argument("--dir", default=".demo", help="working directory (.demo)")
    parser.add_argument(
        "--transport",
        choices=("cometd", "pubsub"),
        default="cometd",
        help="how the subscriber takes the platform events: CometD or the Pub/Sub API (cometd)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default="INFO",
        help="LOG_LEVEL of the services (INFO)",
    )


def run(args: argparse.Namespace) -> int:
    settings = start("demo", needs=(), log=False)
    workdir = Path(args.dir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with _exclusive(workdir):
            return Demo(args, settings, workdir, sys.stdout).main()
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_FAILED


class Demo:
    def __init__(
        self, args: argparse.Namespace, settings: Settings, workdir: Path, out: TextIO
    ) -> None:
        self.args = args
        self.settings = settings
        self.workdir = workdir
        self.out = out
        self.log_path = workdir / "demo.log"
        # The services inherit only the basics of this environment, plus the demo's settings.
        supervisor = Supervisor(os.environ, self.log_path, workdir / "pids.json")
        self.stack = Stack(workdir, supervisor, {"APP_ENV": "demo"})
        self.plan = demo_plan.plan_orders(args.orders)
        self.urls: dict[str, str] = {}
        self.port = 0  # the health app's
        self.refs: dict[str, str] = {}
        self.admin: Any = None  # the sandbox's admin client, once it runs
        self.customers = {c.ref: c.name for c in demo_plan.CUSTOMERS}
        self.progress = Progress(out)
        self.approved_at: dict[str, float] = {}  # order ref -> epoch seconds of its approval
        self.outcomes: dict[str, Row] = {}  # order ref -> its row, frozen once final
        self.began = 0.0

    def main(self) -> int:
        try:
            with _signals(INTERRUPT):
                self.start_everything()
                rows = self.run_orders()
                self.say("\n" + summary_table(rows) + "\n\n" + verdict_line(rows))
                code = 0 if all(_expected(row) for row in rows) else EXIT_FAILED
                log.info("Demo finished", extra={"orders": len(rows), "exit_status": code})
                if self.args.keep_running:
                    self.keep_running(rows)
                else:
                    self.say(
                        f"log file: {self.log_path}\n(--keep-running leaves it all up to explore)"
                    )
                return code
        except KeyboardInterrupt:
            self.say("\ninterrupted")
            return EXIT_INTERRUPTED
        except (SandboxAdminError, requests.RequestException) as exc:
            self.say(f"\ndemo failed: the sandbox: {exc}\nlog file: {self.log_path}")
            return EXIT_FAILED
        except (DemoError, PrivateRedisError, NotReady) as exc:
            self.say(f"\ndemo failed: {exc}\nlog file: {self.log_path}")
            return EXIT_FAILED
        finally:
            with _signals(IGNORE):
                self.stop_everything()

    # --- start -------------------------------------------------------------------------------

    def start_everything(self) -> None:
        began = time.monotonic()
        self.fresh_workdir()
        configure_logging(self.args.log_level, "demo", stream=self._log_stream())
        url, private, why = configured_or_private(
            self.settings.redis_url, self.stack.supervisor, self.workdir / "redis", DEMO_MARKER
        )
        self.say(f"redis:    {why}")
        self.stack.use_redis(url)
        self.urls["redis"] = url if private else "REDIS_URL"
        if private is None:
            self.stack.on_close(lambda: release_database(url, DEMO_MARKER))
        self.stack.use_database(Database.sqlite(self.workdir / "provisioning.db"))
        self.start_sandbox()
        self.stack.settings.update(self.service_settings())
        self.start_services()
        self.wait_until_ready()
        self.say(f"ready in {time.monotonic() - began:.1f}s\n" + self.where_to_look())

    def fresh_workdir(self) -> None:
        """Throw away the previous run: its state would only confuse this one."""
        leftovers = kill_leftovers(self.workdir / "pids.json")
        if leftovers:
            self.say(f"killed {len(leftovers)} processes a previous demo left behind")
        for name in ("sandbox", "redis"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        for path in self.workdir.glob("provisioning.db*"):
            path.unlink()
        self.log_path.write_bytes(b"")

    def _log_stream(self) -> TextIO:
        # Line-buffered and left open: the root handler writes to it until the process exits.
        return open(self.log_path, "a", buffering=1)

    def start_sandbox(self) -> None:
        self.stack.start_sandbox()
        self.admin = self.stack.admin
        self.urls["sandbox admin"] = self.stack.sandbox.admin_url
        loaded = self.admin.load(demo_plan.fixture_document(self.plan))
        self.refs = loaded["refs"]
        self.say(f"sandbox:  Salesforce and WHMCS emulators, {len(self.plan)} Draft orders loaded")

    def service_settings(self) -> dict[str, str]:
        env = {
            "SF_EVENTS_TRANSPORT": self.args.transport,
            "LOG_LEVEL": self.args.log_level,
        }
        # rq-dashboard 0.9 imports six without declaring it: without both it cannot mount.
        if find_spec("rq_dashboard") is not None and find_spec("six") is not None:
            # The health app mounts it only behind basic auth; a throwaway password will do.
            env.update(
                RQ_DASHBOARD_ENABLED="true",
                RQ_DASHBOARD_USERNAME="demo",
                RQ_DASHBOARD_PASSWORD=secrets.token_urlsafe(12),
            )
        return env

    def start_services(self) -> None:
        self.port = port = free_port()
        self.stack.start_health(port)
        self.urls["health"] = f"http://127.0.0.1:{port}/health"
        password = self.stack.settings.get("RQ_DASHBOARD_PASSWORD")
        if password:
            self.urls["rq-dashboard"] = f"http://demo:{password}@127.0.0.1:{port}/rq"
        for number in range(1, WORKERS + 1):
            self.stack.start_worker(f"worker-{number}")
        self.stack.start_subscriber()
        children = self.stack.supervisor.children
        names = ", ".join(f"{c.name} ({c.pid})" for c in children if c.tier)
        self.say(f"started:  {names}")
        self.say(f"events:   over {TRANSPORTS[self.args.transport]}")

    def wait_until_ready(self) -> None:
        checks = {
            "health app": lambda: self.stack.health_answers(self.port),
            f"{WORKERS} workers": lambda: self.stack.idle_workers() >= WORKERS,
            "subscriber": self.stack.subscribed,
        }
        self.stack.wait_ready(checks, STARTUP_TIMEOUT)

    def where_to_look(self) -> str:
        if "rq-dashboard" not in self.urls:
            self.urls["rq-dashboard"] = "not installed (pip install -e '.[dashboard]')"
        self.urls["log file"] = f"{self.log_path}  (JSON lines of every service)"
        width = max(len(k) for k in self.urls)
        return "\n".join(f"  {name:<{width}}  {url}" for name, url in self.urls.items())

    # --- orders ------------------------------------------------------------------------------

    def run_orders(self) -> list[Row]:
        """Approve every order; the WHMCS-outage order alone, after all others have ended."""
        self.began = time.monotonic()
        self.say(f"\napproving {len(self.plan)} orders in the sandbox (the Flow publishes events)")
        deadline = self.began + self.args.timeout
        first = [o for o in self.plan if o.scenario is not WHMCS_DOWN]
        self.approve(first)
        self.watch(first, deadline)
        last = [o for o in self.plan if o.scenario is WHMCS_DOWN]
        if last:
            with self.whmcs_outage():
                self.approve(last)
                self.watch(last, deadline)
        rows = self.rows()
        self.progress.finish(rows, time.monotonic() - self.began)
        return rows

    def approve(self, orders: list[PlannedOrder]) -> None:
        for order in orders:
            event = self.admin.approve(self.refs[order.ref])
            # Salesforce's own clock at both ends: the event's CreatedDate, the Order's
            # LastModifiedDate when it took its outcome.
            created = sf_time(event.get("payload", {}).get("CreatedDate"))
            self.approved_at[order.ref] = created if created is not None else time.time()
        log.info("Demo orders approved", extra={"orders": [self.refs[o.ref] for o in orders]})

    @contextlib.contextmanager
    def whmcs_outage(self) -> Iterator[None]:
        # Every AddOrder fails while only this order is in flight, however often it is tried.
        self.admin.add_fault("whmcs.AddOrder", "status", count=-1, status=503)
        try:
            yield
        finally:
            self.admin.clear_faults()

    def watch(self, orders: list[PlannedOrder], deadline: float) -> None:
        waiting = {o.ref for o in orders}
        while True:
            self.stack.check_alive()
            rows = self.rows()
            self.progress.update(rows, time.monotonic() - self.began)
            waiting -= {r.planned.ref for r in rows if r.outcome.final}
            if not waiting or time.monotonic() > deadline:
                return
            time.sleep(POLL_INTERVAL)

    def rows(self) -> list[Row]:
        records = {r["Id"]: r for r in self.admin.orders()}
        for order in self.plan:
            known = self.outcomes.get(order.ref)
            if known is None or not known.outcome.final:
                record = records.get(self.refs[order.ref], {})
                outcome = outcome_from_record(record, self.approved_at.get(order.ref))
                self.outcomes[order.ref] = Row(order, self.customers[order.customer], outcome)
        return [self.outcomes[order.ref] for order in self.plan]

    # --- keep running and stop ---------------------------------------------------------------

    def keep_running(self, rows: list[Row]) -> None:
        self.say("\nStill running; Ctrl-C stops everything.\n" + self.where_to_look())
        self.say(retry_hints(self.stack.sandbox.admin_url, rows))
        seen = {r["Id"]: str(r.get("LastModifiedDate")) for r in self.admin.orders()}
        reported_dead: set[str] = set()
        try:
            while True:
                time.sleep(1.0)
                seen = self.report_changes(seen)
                for child in self.stack.supervisor.dead():
                    if child.name not in reported_dead:
                        reported_dead.add(child.name)
                        self.say(f"{child.name} exited ({child.returncode}); see the log file")
        except KeyboardInterrupt:
            self.say("")

    def report_changes(self, seen: dict[str, str]) -> dict[str, str]:
        """Print every order that reached an outcome again since the last look."""
        now = {}
        for record in self.admin.orders():
            now[record["Id"]] = version = str(record.get("LastModifiedDate"))
            outcome = outcome_from_record(record)
            if outcome.final and seen.get(record["Id"]) != version:
                detail = outcome.whmcs_order_id or f"{outcome.error_code}: {outcome.error_message}"
                self.say(f"order {outcome.number} {outcome.order_id}: {outcome.status} {detail}")
        return now

    def stop_everything(self) -> None:
        stopped = self.stack.close()
        if stopped:
            names = ", ".join(f"{c.name} {c.pid}" for c in stopped)
            self.say(f"stopped:  {names}")

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _expected(row: Row) -> bool:
    return demo_plan.as_expected(row.planned.scenario, row.outcome)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


@contextlib.contextmanager
def _exclusive(workdir: Path) -> Iterator[None]:
    """One demo per directory: a second one would wipe the first one's state."""
    with open(workdir / "lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(f"another demo is running in {workdir}") from None
        yield


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


# Ctrl-C, SIGTERM and SIGHUP all stop the demo cleanly. SIGINT is set explicitly: a shell without
# job control starts background commands with it ignored, and Python then leaves it ignored.
INTERRUPT = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGTERM: _interrupt,
    signal.SIGHUP: _interrupt,
}
# While stopping, a second Ctrl-C must not leave half the processes running.
IGNORE = dict.fromkeys(INTERRUPT, signal.SIG_IGN)


@contextlib.contextmanager
def _signals(handlers: dict[signal.Signals, Any]) -> Iterator[None]:
    previous = {s: signal.signal(s, handler) for s, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
