"""`provisioner mappings set <AccountId> <clientid> | import <csv> | list`: Account -> WHMCS client.

The worker looks here first and falls back to the Account field named by SF_ACCOUNT_CLIENT_FIELD.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from shared.connections import database_engine
from shared.sfid import is_valid_id, to18
from shared.startup import start
from worker.mapping import parse_positive_int
from worker.records import Records

ACCOUNT_COLUMNS = ("sf_account_id", "account_id", "accountid")
CLIENT_COLUMNS = ("whmcs_client_id", "client_id", "clientid")


class MappingInputError(ValueError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    set_cmd = sub.add_parser("set", help="map one Salesforce Account to a WHMCS client id")
    set_cmd.add_argument("account_id", help="Salesforce Account id (15 or 18 characters)")
    set_cmd.add_argument("client_id", help="WHMCS client id")
    set_cmd.add_argument("--note", default="", help="free text, e.g. who asked for it")
    import_cmd = sub.add_parser(
        "import",
        help="load a CSV with a header: sf_account_id,whmcs_client_id[,note] (all or nothing)",
    )
    import_cmd.add_argument("csv_path", type=Path)
    sub.add_parser("list", help="print every mapping")


def run(args: argparse.Namespace) -> int:
    settings = start("provisioner", needs=(), log=False)
    engine = database_engine(settings.database_url)
    records = Records(engine)
    try:
        if args.action == "list":
            return _list(records)
        rows = (
            [parse_row(args.account_id, args.client_id, args.note)]
            if args.action == "set"
            else read_csv(args.csv_path)
        )
        count = records.set_mappings(rows, datetime.now(UTC))
        print(f"{count} mapping(s) saved")
        return 0
    except (MappingInputError, OSError) as exc:
        print(f"provisioner mappings: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def parse_row(account_id: str, client_id: str, note: str = "", where: str = "") -> tuple:
    account_id = account_id.strip()
    if not is_valid_id(account_id, "Account"):
        raise MappingInputError(f"{where}{account_id!r} is not a Salesforce Account id (001...)")
    client = parse_positive_int(client_id)
    if client is None:
        raise MappingInputError(f"{where}{client_id!r} is not a WHMCS client id")
    return to18(account_id), client, note.strip()


def read_csv(path: Path) -> list[tuple[str, int, str]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return parse_csv(csv.DictReader(fh))


def parse_csv(reader: csv.DictReader) -> list[tuple[str, int, str]]:
    fields = {name.strip().lower(): name for name in reader.fieldnames or []}
    account = _column(fields, ACCOUNT_COLUMNS)
    client = _column(fields, CLIENT_COLUMNS)
    note = fields.get("note")
    rows = [
        parse_row(
            row[account] or "",
            row[client] or "",
            (row.get(note) or "") if note else "",
            where=f"line {reader.line_num}: ",
        )
        for row in reader
    ]
    if not rows:
        raise MappingInputError("the CSV has no rows")
    return rows


def _column(fields: dict[str, str], names: Iterable[str]) -> str:
    for name in names:
        if name in fields:
            return fields[name]
    raise MappingInputError(f"the CSV header needs one of: {', '.join(names)}")


def _list(records: Records) -> int:
    rows = records.mappings()
    if not rows:
        print("no mappings")
        return 0
    print(f"{'SALESFORCE ACCOUNT':<20} {'WHMCS CLIENT':>12}  {'UPDATED (UTC)':<19}  NOTE")
    for row in rows:
        updated = row["updated_at"].strftime("%Y-%m-%d %H:%M:%S") if row["updated_at"] else ""
        print(
            f"{row['sf_account_id']:<20} {row['whmcs_client_id']:>12}  {updated:<19}  {row['note']}"
        )
    return 0
