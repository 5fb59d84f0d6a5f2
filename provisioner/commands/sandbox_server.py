"""`provisioner sandbox`: run the Salesforce and WHMCS emulators in the foreground.

Prints the environment block (`NAME=value` lines, shell-quoted) that points the services at the
emulators, writes the same block to `<state dir>/sandbox.env`, and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from sandbox import fixtures
from sandbox.app import Sandbox
from shared.sfid import is_valid_id

ENV_FILE = "sandbox.env"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".sandbox"),
        metavar="DIR",
        help="where certificates, the app key and sandbox.env are written",
    )
    parser.add_argument(
        "--fixtures", type=Path, metavar="FILE", help="a fixture document (JSON) to load at start"
    )
    parser.add_argument(
        "--demo-fixtures", action="store_true", help="load the demo's fixture document at start"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--public-host",
        metavar="NAME",
        help="host name the services use to reach the sandbox (default localhost)",
    )
    parser.add_argument("--sf-port", type=int, default=0, help="Salesforce HTTPS port (0: free)")
    parser.add_argument("--whmcs-port", type=int, default=0, help="WHMCS HTTPS port (0: free)")
    parser.add_argument("--admin-port", type=int, default=0, help="admin HTTP port (0: free)")
    parser.add_argument(
        "--pubsub-port", type=int, default=0, help="Pub/Sub API gRPC (TLS) port (0: free)"
    )
    parser.add_argument(
        "--cometd-timeout",
        type=float,
        default=110.0,
        metavar="SECONDS",
        help="how long a CometD connect is held open (Salesforce: 110)",
    )
    parser.add_argument(
        "--reconnect-timeout",
        type=float,
        default=40.0,
        metavar="SECONDS",
        help="how long a CometD client may stay away before it is forgotten",
    )
    parser.add_argument(
        "--pricebook-id", metavar="ID", help="id of the Portal price book (default: minted)"
    )
    parser.add_argument("--whmcs-identifier", help="WHMCS API identifier (default: random)")
    parser.add_argument("--whmcs-secret", help="WHMCS API secret (default: random)")


def _document(args: argparse.Namespace) -> dict | None:
    if args.fixtures is not None:
        return fixtures.read(args.fixtures)
    return fixtures.demo_document() if args.demo_fixtures else None


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def run(args: argparse.Namespace) -> int:
    if args.pricebook_id and not is_valid_id(args.pricebook_id, "Pricebook2"):
        print(
            f"--pricebook-id {args.pricebook_id} is not a Pricebook2 id (01s...)", file=sys.stderr
        )
        return 2
    try:
        document = _document(args)
    except fixtures.FixtureError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    sandbox = Sandbox.start(
        args.state_dir,
        host=args.host,
        sf_port=args.sf_port,
        whmcs_port=args.whmcs_port,
        admin_port=args.admin_port,
        pubsub_port=args.pubsub_port,
        cometd_timeout=args.cometd_timeout,
        reconnect_timeout=args.reconnect_timeout,
        public_host=args.public_host,
        pricebook_id=args.pricebook_id,
        whmcs_identifier=args.whmcs_identifier,
        whmcs_secret=args.whmcs_secret,
    )
    try:
        if document is not None:
            sandbox.load(document)
        lines = sandbox.env_lines()
        env_file = sandbox.state_dir / ENV_FILE
        env_file.write_text("\n".join(lines) + "\n")
        env_file.chmod(0o600)  # it holds the WHMCS secret
        print("\n".join(lines), flush=True)
        print(f"sandbox running; state in {sandbox.state_dir}; Ctrl-C stops it", file=sys.stderr)
        _wait_for_signal()
    finally:
        sandbox.stop()
    return 0
