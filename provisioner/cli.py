"""`provisioner`: the operator's command line. Each command lives in its own module here."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> one-line help; provisioner/<module>.py defines add_arguments(parser) and run(args) -> int
COMMANDS = {
    "sandbox": ("sandbox_cmd", "run the Salesforce and WHMCS emulators on loopback"),
    "demo": ("demo.command", "run the whole flow end to end against the sandbox"),
    "doctor": ("doctor", "walk the runbook's checklist against the live configuration"),
    "status": ("status", "print an order's fulfilment timeline"),
    "replay": ("replay", "show or move the stored replay position"),
    "mappings": ("mappings", "manage Salesforce Account -> WHMCS client mappings"),
    "db": ("db_cmd", "create or migrate the database schema"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="provisioner", description="Salesforce -> WHMCS order provisioning: operator tools."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"provisioner.{module_name}")
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
