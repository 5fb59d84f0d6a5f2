"""The fulfilment database: schema, versioned migrations, and the start-up schema check.

SQLite by default, PostgreSQL in compose and production (SQLAlchemy 2 Core). Tables:
- account_mappings: Salesforce Account -> WHMCS client (`provisioner mappings`)
- fulfilments: one row per job attempt on an order, with the WHMCS ids it produced; the
  checkpoint that makes a retry resume instead of ordering twice
- fulfilment_steps: the step log `provisioner status <OrderId>` prints as a timeline
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    inspect,
    select,
)
from sqlalchemy.engine import Connection

metadata = MetaData()


def utcnow() -> datetime:
    return datetime.now(UTC)


schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, nullable=False),
)

account_mappings = Table(
    "account_mappings",
    metadata,
    Column("sf_account_id", String(18), primary_key=True),
    Column("whmcs_client_id", Integer, nullable=False),
    Column("note", String(255), nullable=False, default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False, default=utcnow),
)

fulfilments = Table(
    "fulfilments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sf_order_id", String(18), nullable=False, index=True),
    Column("job_id", String(80), nullable=False, default=""),
    Column("event_uuid", String(64), nullable=False, default=""),
    Column("replay_id", String(32), nullable=False, default=""),
    Column("attempt", Integer, nullable=False, default=1),
    # running | activated | failed | skipped
    Column("status", String(16), nullable=False, default="running"),
    Column("step", String(32), nullable=False, default=""),
    Column("worker", String(120), nullable=False, default=""),
    Column("whmcs_client_id", Integer),
    Column("whmcs_order_id", Integer, index=True),
    Column("whmcs_service_ids", String(255), nullable=False, default=""),
    Column("whmcs_invoice_id", Integer),
    # Set just before AddOrder is sent: a row with this and no whmcs_order_id means the outcome of
    # an AddOrder is unknown, so the next attempt must look in WHMCS before ordering again.
    Column("create_started_at", DateTime(timezone=True)),
    Column("accepted_at", DateTime(timezone=True)),
    Column("error_code", String(40), nullable=False, default=""),
    Column("error_message", String(255), nullable=False, default=""),
    Column("started_at", DateTime(timezone=True), nullable=False, default=utcnow),
    Column("finished_at", DateTime(timezone=True)),
)

fulfilment_steps = Table(
    "fulfilment_steps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "fulfilment_id",
        Integer,
        ForeignKey("fulfilments.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("step", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),  # ok | failed | skipped
    Column("duration_ms", Float, nullable=False, default=0.0),
    Column("detail", String(500), nullable=False, default=""),
    Column("at", DateTime(timezone=True), nullable=False, default=utcnow),
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[account_mappings, fulfilments, fulfilment_steps])


# Append-only: each entry takes the schema from version i to i + 1.
MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_v1,)
HEAD = len(MIGRATIONS)


class SchemaError(RuntimeError):
    pass


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_version"):
        return 0
    version = conn.execute(select(schema_version.c.version)).scalar()
    return int(version or 0)


def upgrade(engine: Engine) -> tuple[int, int]:
    """Bring the schema to HEAD; returns (version before, version after). Safe to run twice."""
    with engine.begin() as conn:
        before = current_version(conn)
        if before == 0:
            metadata.create_all(conn, tables=[schema_version])
            conn.execute(schema_version.insert().values(version=0))
        for index in range(before, HEAD):
            MIGRATIONS[index](conn)
            conn.execute(schema_version.update().values(version=index + 1))
    return before, HEAD


def check(engine: Engine) -> None:
    """Refuse to start on a database that `provisioner db upgrade` has not brought to HEAD."""
    with engine.connect() as conn:
        version = current_version(conn)
    if version != HEAD:
        raise SchemaError(
            f"database schema is at version {version}, this release needs {HEAD}: "
            "run `provisioner db upgrade`"
        )
