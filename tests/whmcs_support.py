"""A WHMCS emulator on loopback TLS for the WHMCS tests (independent of the combined sandbox)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.faults import FaultBook
from sandbox.fixtures import whmcs_client, whmcs_pricing
from sandbox.http_server import Server
from sandbox.tls import Material
from sandbox.whmcs.emulator import API_PATH, WhmcsEmulator

IDENTIFIER = "D4j1dKYE3g40VROOPCGyJ9zRwPz4"
SECRET = "F1CKGXRIpylMfsrig3mwwdSdYUdLiFlo"
ACCESS_KEY = "s3cr3t-access-key"

ADA = whmcs_client(1)
ADA["paymethods"].append(
    {"type": "BankAccount", "gateway_name": "", "bank_name": "Bank of Examples"}
)
FIXTURE: dict[str, Any] = {
    "gateways": [
        {"module": "stripe", "displayname": "Stripe"},
        {"module": "banktransfer", "displayname": "Bank Transfer"},
    ],
    "clients": [
        ADA,
        {"id": 2, "firstname": "No", "lastname": "Card", "email": "nocard@example.com"},
        {"id": 3, "firstname": "Gone", "lastname": "Away", "status": "Closed"},
    ],
    "products": [
        {
            "pid": 1,
            "gid": 1,
            "name": "Fibre 100",
            "type": "other",
            "paytype": "recurring",
            "pricing": whmcs_pricing("50.00", "500.00"),
        },
        {
            "pid": 2,
            "gid": 1,
            "name": "Static IP",
            "paytype": "recurring",
            "pricing": {"USD": {"monthly": "5.00", "annually": "50.00"}},
        },
        {"pid": 3, "gid": 2, "name": "Router", "paytype": "onetime", "pricing": {"USD": {}}},
        {
            "pid": 4,
            "gid": 1,
            "name": "Managed Firewall",
            "module": "firewallpanel",
            "setup_error": "Firewall panel unreachable",
            "pricing": {"USD": {"monthly": "20.00"}},
        },
        {
            "pid": 5,
            "gid": 1,
            "name": "Single-seat Licence",
            "allowqty": 0,
            "pricing": {"USD": {"monthly": "9.00"}},
        },
    ],
}


@dataclass
class Running:
    emulator: WhmcsEmulator
    faults: FaultBook
    server: Server
    ca_path: Path

    @property
    def url(self) -> str:
        return self.server.url + API_PATH


@contextmanager
def running_whmcs(material: Material) -> Iterator[Running]:
    faults = FaultBook()
    emulator = WhmcsEmulator(faults, identifier=IDENTIFIER, secret=SECRET, access_key=ACCESS_KEY)
    emulator.load(copy.deepcopy(FIXTURE))
    server = Server(emulator.handle, ssl_context=material.server_context()).start()
    try:
        yield Running(emulator, faults, server, material.ca_path)
    finally:
        server.stop()
