"""A frozen copy of the schema the hand-written migrations list made (its version 1), and the
way it made it: the "database made by today's code" the Alembic baseline must adopt unchanged.

Copied from shared/db.py as it was before the migrations moved to Alembic; never edit it to
follow the models.
"""

from __future__ import annotations

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
)

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


def create_legacy_database(engine: Engine) -> None:
    """What the old `db.upgrade` did on an empty database."""
    with engine.begin() as conn:
        metadata.create_all(conn, tables=[schema_version])
        conn.execute(schema_version.insert().values(version=0))
        metadata.create_all(conn, tables=[account_mappings, fulfilments, fulfilment_steps])
        conn.execute(schema_version.update().values(version=1))
