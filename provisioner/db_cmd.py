"""`provisioner db upgrade | check`: create or migrate the schema, or verify it is current."""

from __future__ import annotations

import argparse

from shared import db
from shared.connections import database_engine
from shared.startup import start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["upgrade", "check"])


def run(args: argparse.Namespace) -> int:
    settings = start("provisioner", needs=(), log=False)
    engine = database_engine(settings.database_url)
    try:
        if args.action == "upgrade":
            before, after = db.upgrade(engine)
            print(f"schema at version {after} (was {before})")
            return 0
        db.check(engine)
        print(f"schema at version {db.HEAD}: current")
        return 0
    except db.SchemaError as exc:
        print(str(exc))
        return 1
    finally:
        engine.dispose()
