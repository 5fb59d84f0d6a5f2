"""`provisioner`: the operator's command line. Each command is one module with
`add_arguments(parser)` and `run(args) -> int`: provisioner/commands/*.py, or the command module
of a package (doctor/, demo/)."""

from __future__ import annotations

import argparse
import sys

from provisioner.commands import (
    account_mappings,
    database_admin,
    order_status,
    replay_position,
    sandbox_server,
)
from provisioner.demo import command as demo
from provisioner.doctor import command as doctor

# name -> (module, one-line help)
COMMANDS = {
    "sandbox": (sandbox_server, "run the Salesforce and WHMCS emulators on loopback"),
    "demo": (demo, "run the whole flow end to end against the sandbox"),
    "doctor": (doctor, "walk the runbook's checklist against the live configuration"),
    "status": (order_status, "print an order's fulfilment timeline"),
    "replay": (replay_position, "show or move the stored replay position"),
    "mappings": (account_mappings, "manage Salesforce Account -> WHMCS client mappings"),
    "db": (database_admin, "create or migrate the database schema"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="provisioner", description="Salesforce -> WHMCS order provisioning: operator tools."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
