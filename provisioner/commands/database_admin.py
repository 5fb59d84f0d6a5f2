"""`provisioner db upgrade | check | prune | revision`: migrate the schema, verify it, bound the
history; write a new migration (developers)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from shared import db, retention
from shared.connections import database_engine
from shared.errors import SchemaError
from shared.startup import start

EXIT_STALE, EXIT_UNREACHABLE = 1, 3  # 2 is a configuration error, as for every process


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["upgrade", "check", "prune", "revision"],
        help="upgrade: run the Alembic migrations to head; check: exit 0 only if the schema is "
        "current (1 if not); prune: delete finished history older than --older-than; "
        "revision: write the next migration from the models (against a database at head)",
    )
    parser.add_argument("-m", "--message", default="", help="revision: what it changes")
    parser.add_argument(
        "--older-than",
        type=_age,
        default=retention.DEFAULT_AGE,
        metavar="AGE",
        help=f"prune: attempts that finished longer ago than this (90d, 12w, 36h; "
        f"default {retention.DEFAULT_AGE.days}d)",
    )


def run(args: argparse.Namespace) -> int:
    settings = start("provisioner", needs=(), log=False)
    engine = database_engine(settings.database_url)
    try:
        if args.action == "upgrade":
            before, after = db.upgrade(engine)
            print(f"schema at revision {after} (was {before or 'empty'})")
            return 0
        db.check(engine)
        if args.action == "check":
            print(f"schema at revision {db.head()}: current")
            return 0
        if args.action == "revision":
            print(f"wrote revision {db.new_revision(engine, args.message or 'change')}")
            return 0
        cutoff = datetime.now(UTC) - args.older_than
        pruned = retention.prune(engine, cutoff)
        print(
            f"pruned {pruned.attempts} attempts and {pruned.steps} step rows "
            f"finished before {cutoff:%Y-%m-%d %H:%M}Z"
        )
        return 0
    except SchemaError as exc:
        print(str(exc))
        return EXIT_STALE
    except SQLAlchemyError as exc:
        print(f"database unreachable or refusing: {type(exc).__name__}")
        return EXIT_UNREACHABLE
    finally:
        engine.dispose()


def _age(text: str):
    try:
        return retention.parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
