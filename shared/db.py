"""The fulfilment database: schema, Alembic migrations, and the start-up schema check.

SQLite by default, PostgreSQL in compose and production (SQLAlchemy 2 Core). Tables:
- account_mappings: Salesforce Account -> WHMCS client (`provisioner mappings`)
- fulfilments: one row per job attempt on an order, with the WHMCS ids it produced; the
  checkpoint that makes a retry resume instead of ordering twice
- fulfilment_steps: the step log `provisioner status <OrderId>` prints as a timeline
- outcome_counts, step_counts: running totals for /metrics, kept by database triggers
  (migration 0002) in the transaction that writes the history, so a scrape never scans it and
  pruning it leaves the totals alone

The migrations live in shared/migrations (Alembic, shipped inside the wheel). A database made
before them, by the hand-written versioned list, carries a `schema_version` table: `upgrade`
stamps it at the baseline revision, which is exactly that schema, and goes on from there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    inspect,
    text,
)
from sqlalchemy.engine import Connection

from shared.errors import SchemaError

metadata = MetaData()


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    Column("status", String(16), nullable=False, default="running", index=True),
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


# Upper bounds (seconds) of the step duration histogram's buckets. step_counts has one column per
# bound, so changing them is a migration.
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# Attempts that finished with each (status, error_code) since the database was made. Running
# attempts are counted through the status index instead: a counter row every job start and end
# updated would be one lock that all workers queue on.
outcome_counts = Table(
    "outcome_counts",
    metadata,
    Column("status", String(16), nullable=False),
    Column("error_code", String(40), nullable=False),
    Column("count", Integer, nullable=False),
    PrimaryKeyConstraint("status", "error_code"),
)

# Step log rows by (step, outcome): their count, total duration and cumulative bucket counts.
step_counts = Table(
    "step_counts",
    metadata,
    Column("step", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("count", Integer, nullable=False),
    Column("sum_ms", Float, nullable=False),
    *(Column(f"le_{i}", Integer, nullable=False) for i in range(len(STEP_BUCKETS))),
    PrimaryKeyConstraint("step", "outcome"),
)

# The revision a database made by the hand-written migrations list (version 1) is stamped at.
BASELINE = "0001"
LEGACY_TABLE = "schema_version"
UPGRADE_LOCK = 0x5F_DB_16  # a PostgreSQL advisory lock key of our own


def alembic_config(conn: Connection | None = None) -> Config:
    """Alembic's configuration, built in code: no alembic.ini to ship or to find."""
    config = Config()
    config.set_main_option("script_location", "shared:migrations")
    config.attributes["connection"] = conn
    return config


@cache
def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at; the baseline for one the old list made; None if empty."""
    revision = MigrationContext.configure(conn).get_current_revision()
    if revision is None and inspect(conn).has_table(LEGACY_TABLE):
        return BASELINE
    return revision


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to head; returns (revision before, revision after). Safe to run twice."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Several hosts may run `db upgrade` as they start: one migrates, the others wait
            # for it and then find nothing to do. Released at commit.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK})
        before = current_revision(conn)
        config = alembic_config(conn)
        if before == BASELINE and MigrationContext.configure(conn).get_current_revision() is None:
            command.stamp(config, BASELINE)  # made by the old list: its schema is the baseline
        command.upgrade(config, "head")
        after = current_revision(conn)
    assert after is not None
    return before, after


def new_revision(engine: Engine, message: str) -> str:
    """Write the next revision (numbered after head) with what the models add to the schema at
    head, as Alembic's autogenerate sees it; for a developer, to read and finish by hand."""
    check(engine)
    rev_id = f"{int(head()) + 1:04d}"
    with engine.begin() as conn:
        command.revision(alembic_config(conn), message, autogenerate=True, rev_id=rev_id)
    head.cache_clear()
    return rev_id


def check(engine: Engine) -> None:
    """Refuse to start on a database that `provisioner db upgrade` has not brought to head."""
    with engine.connect() as conn:
        revision = current_revision(conn)
    if revision != head():
        raise SchemaError(
            f"database schema is at revision {revision or 'none'}, this release needs {head()}: "
            "run `provisioner db upgrade`"
        )
