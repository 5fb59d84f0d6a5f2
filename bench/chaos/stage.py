"""What the chaos run stands on: the kit's stack on a private append-only Redis and PostgreSQL
database, its services under a supervisor that restarts what dies."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from provisioner.kit.database import Database
from provisioner.kit.private_redis import RedisServer
from provisioner.kit.stack import Stack
from provisioner.kit.supervisor import Supervisor
from sandbox.fixtures import standard_document, whmcs_client
from sandbox.http_server import wait_until
from worker.mapping import SCALING
from worker.reaper import detection_bound, detection_bound_before_lease

COMETD_TIMEOUT = 10.0  # seconds the sandbox holds a long-poll (Salesforce: 110)
LOAD_BATCH = 100  # orders per fixture load


@dataclass(frozen=True)
class Tuning:
    """Service settings for the run: short timeouts, so faults resolve within minutes. Each field
    is the environment variable of its name in capitals, in the order the report lists them."""

    sf_events_transport: str = "cometd"
    # Pub/Sub watchdog: past the sandbox's keepalive pace (COMETD_TIMEOUT), well short of 330 s.
    sf_pubsub_stall_timeout: float = 25.0
    order_lock_ttl: int = 6
    whmcs_write_timeout: float = 2.0
    whmcs_read_timeout: float = 5.0
    sf_timeout: float = 5.0
    job_timeout: int = 120
    # The reconciler finds approvals with no job (an event never published, jobs lost with
    # Redis's last second): sweeps every few seconds, for orders Activating longer than a
    # job ever takes here, so that it acts within the run and not on orders a job still holds.
    reconcile_interval: float = 3.0
    reconcile_after: float = 20.0
    http_connect_timeout: float = 3.0

    def env(self) -> dict[str, str]:
        values = {f.name.upper(): getattr(self, f.name) for f in fields(self)}
        return {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in values.items()}

    @property
    def abandoned_window(self) -> float:
        """From a worker's death to its order being Failed (the reaper's bounds: with the lease
        held, and before the job took it), plus a margin."""
        ttl = self.order_lock_ttl
        return max(detection_bound(ttl), detection_bound_before_lease(ttl)) + 3.0


# The catalogue's three ways of ordering N units (shared/whmcs.py cart_entries): WHMCS allowqty
# 0 (no qty field: the product is repeated once per unit), 1 (qty, one service per unit) and 2
# ("scaling": one service holding the quantity). Product ref -> (WHMCS pid, allowqty).
PRODUCTS = {"fibre100": (1, 1), "static-ip": (2, 0), "mailbox": (3, SCALING)}


def fixture(orders: int, clients: int) -> tuple[dict[str, Any], list[str]]:
    """Products of every allowqty and `clients` customers (each a WHMCS client with a card), and
    `orders` Draft orders spread over them, of one or two lines of 1 to 3 units each. Returns
    the document and the refs."""
    document = standard_document(0)
    salesforce, whmcs = document["salesforce"], document["whmcs"]
    salesforce["products"].append(
        {
            "ref": "mailbox",
            "Name": "Mailbox",
            "ProductCode": "MBX-1",
            "WH_Product_ID__c": PRODUCTS["mailbox"][0],
            "Billing_Cycle__c": "Monthly",
            "IsActive": True,
            "UnitPrice": 3.0,
        }
    )
    whmcs["products"].append(
        {**whmcs["products"][0], "pid": PRODUCTS["mailbox"][0], "name": "Mailbox"}
    )
    for product in whmcs["products"]:
        ref = next(r for r, (pid, _) in PRODUCTS.items() if pid == product["pid"])
        product["allowqty"] = PRODUCTS[ref][1]
    salesforce["accounts"] = [
        {"ref": f"acct{i}", "Name": f"Customer {i}", "WHMCS_Client_ID__c": str(i)}
        for i in range(1, clients + 1)
    ]
    whmcs["clients"] = [whmcs_client(i, email=f"c{i}@example.com") for i in range(1, clients + 1)]
    refs = [f"o{n}" for n in range(1, orders + 1)]
    salesforce["orders"] = [
        _order(ref, n % clients + 1, order_lines(n)) for n, ref in enumerate(refs)
    ]
    return document, refs


def order_lines(n: int) -> list[tuple[str, int]]:
    """The n-th order's (product ref, quantity) lines: every product and every quantity from 1
    to 3 comes round; every third order has a second line of another product."""
    names = list(PRODUCTS)
    first = names[n % len(names)]
    lines = [(first, 1 + (n // len(names)) % 3)]
    if n % 3 == 2:
        lines.append((names[(n + 1) % len(names)], 1 + n % 2))
    return lines


def expected_services(n: int) -> dict[int, tuple[int, int]]:
    """WHMCS pid -> (services, units) the n-th order must end with: one service per unit, or
    one service holding them all for a scaling product (allowqty 2)."""
    units: dict[int, int] = {}
    for ref, quantity in order_lines(n):
        pid = PRODUCTS[ref][0]
        units[pid] = units.get(pid, 0) + quantity
    scaling = {pid for pid, allowqty in PRODUCTS.values() if allowqty == SCALING}
    return {pid: (1 if pid in scaling else n_units, n_units) for pid, n_units in units.items()}


def _order(ref: str, client: int, lines: list[tuple[str, int]]) -> dict[str, Any]:
    items = [{"product": p, "Quantity": q, "UnitPrice": 50.0} for p, q in lines]
    return {"ref": ref, "account": f"acct{client}", "Status": "Draft", "items": items}


class ChaosStack(Stack):
    def __init__(
        self, work_dir: Path, database_url: str, tuning: Tuning, clock: Callable[[], float]
    ) -> None:
        (work_dir / "logs").mkdir(parents=True, exist_ok=True)
        settings = {**tuning.env(), "APP_ENV": "chaos", "LOG_LEVEL": "INFO"}
        settings["SF_EVENTS_REPLAY"] = "LATEST"
        super().__init__(work_dir, Supervisor(os.environ, log_dir=work_dir / "logs"), settings)
        self.tuning = tuning
        self.clock = clock
        self.redis = RedisServer(work_dir / "redis", secrets.token_urlsafe(18), append_only=True)
        try:
            self.on_close(self.redis.stop)
            self.redis.start()
            self.use_redis(self.redis.url)
            self.use_database(Database.create(database_url, "chaos"))
            self.start_sandbox(cometd_timeout=COMETD_TIMEOUT)
        except BaseException:
            self.close()  # what did start must not outlive a failed start
            raise

    def load(self, orders: int, clients: int) -> dict[str, dict[int, tuple[int, int]]]:
        """Load the fixture; order id -> what WHMCS must hold for it (expected_services)."""
        document, refs = fixture(orders, clients)
        order_docs = document["salesforce"].pop("orders")
        ids = dict(self.admin.load(document)["refs"])
        for start in range(0, len(order_docs), LOAD_BATCH):
            batch = {"salesforce": {"orders": order_docs[start : start + LOAD_BATCH]}}
            ids.update(self.admin.load(batch)["refs"])
        return {ids[ref]: expected_services(n) for n, ref in enumerate(refs)}

    def wait_subscribed(self, timeout: float = 60.0) -> bool:
        """LATEST from no stored id starts at the tip: approve nothing before it is connected."""
        return wait_until(self.subscribed, timeout, 0.1)

    def start_services(self, workers: int) -> None:
        for n in range(1, workers + 1):
            self.start_worker(f"chaos-w{n}", worker_class(n))
        self.start_subscriber("chaos-subscriber")
        self.supervisor.restart_the_dead(self.clock)


def worker_class(n: int) -> str:
    """Every second worker forks a work horse per job; the others run jobs in-process (the
    default): a kill -9 must be survived by both."""
    return "fork" if n % 2 == 0 else "simple"
