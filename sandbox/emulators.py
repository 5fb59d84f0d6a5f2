"""Both emulators and the FaultBook they share: what a fixture document loads into, what `reset`
clears, and what the admin API drives (the Sandbox adds the servers around them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandbox import fixtures
from sandbox.faults import FaultBook
from sandbox.salesforce.emulator import SalesforceEmulator
from sandbox.whmcs.emulator import WhmcsEmulator


@dataclass
class Emulators:
    faults: FaultBook
    salesforce: SalesforceEmulator
    whmcs: WhmcsEmulator

    def load(self, document: dict[str, Any]) -> dict[str, Any]:
        """Load a fixture document into both emulators (what the admin `load` op does)."""
        salesforce, whmcs = fixtures.split(document)
        refs = self.salesforce.load(salesforce)
        reply: dict[str, Any] = {"refs": refs, "pricebook_id": self.salesforce.pricebook_id}
        if whmcs:
            reply["whmcs"] = self.whmcs.load(whmcs)
        return reply

    def reset(self) -> None:
        """Clear every record, event, token, fault and counter; certificates and URLs stay."""
        self.faults.clear()
        self.faults.history.clear()
        self.salesforce.reset()
        self.whmcs.reset()
