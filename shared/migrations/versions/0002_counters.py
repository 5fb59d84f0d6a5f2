"""Counters for /metrics, kept by triggers; the old versions table goes.

outcome_counts and step_counts hold running totals of the history, written by triggers in the
transaction that writes a fulfilment or a step row, whoever writes it (worker, reaper, an
operator's SQL): a scrape reads a few dozen rows instead of grouping the whole history, and
pruning the history leaves the totals, as Prometheus counters must be, alone. The totals start
from the history already there. The index on fulfilments.status counts the running attempts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The histogram's bucket bounds in ms, frozen here: changing them is a new migration.
BOUNDS_MS = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000)
BUCKETS = [f"le_{i}" for i in range(len(BOUNDS_MS))]


def _in_bucket(duration: str, bound: int) -> str:
    return f"CASE WHEN {duration} <= {bound} THEN 1 ELSE 0 END"


COUNT_STEP = f"""
INSERT INTO step_counts (step, outcome, count, sum_ms, {", ".join(BUCKETS)})
VALUES (NEW.step, NEW.outcome, 1, NEW.duration_ms,
        {", ".join(_in_bucket("NEW.duration_ms", b) for b in BOUNDS_MS)})
ON CONFLICT (step, outcome) DO UPDATE SET
    count = step_counts.count + 1,
    sum_ms = step_counts.sum_ms + excluded.sum_ms,
    {", ".join(f"{c} = step_counts.{c} + excluded.{c}" for c in BUCKETS)}
"""

COUNT_OUTCOME = """
INSERT INTO outcome_counts (status, error_code, count)
VALUES (NEW.status, NEW.error_code, 1)
ON CONFLICT (status, error_code) DO UPDATE SET count = outcome_counts.count + 1
"""

SQLITE_TRIGGERS = (
    f"CREATE TRIGGER fulfilment_steps_counted AFTER INSERT ON fulfilment_steps "
    f"BEGIN {COUNT_STEP}; END",
    f"CREATE TRIGGER fulfilments_counted_insert AFTER INSERT ON fulfilments "
    f"WHEN NEW.status <> 'running' BEGIN {COUNT_OUTCOME}; END",
    f"CREATE TRIGGER fulfilments_counted_update AFTER UPDATE OF status ON fulfilments "
    f"WHEN NEW.status <> 'running' AND NEW.status <> OLD.status BEGIN {COUNT_OUTCOME}; END",
)

POSTGRES_TRIGGERS = (
    f"""CREATE FUNCTION count_fulfilment_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{COUNT_STEP};
RETURN NULL;
END $$""",
    "CREATE TRIGGER fulfilment_steps_counted AFTER INSERT ON fulfilment_steps "
    "FOR EACH ROW EXECUTE FUNCTION count_fulfilment_step()",
    f"""CREATE FUNCTION count_fulfilment_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
IF NEW.status = 'running' OR (TG_OP = 'UPDATE' AND NEW.status = OLD.status) THEN
    RETURN NULL;
END IF;
{COUNT_OUTCOME};
RETURN NULL;
END $$""",
    # Deferred to commit, so every transaction takes its step counter rows first and its outcome
    # counter rows last: Records.begin closes a superseded attempt before it logs steps, a save
    # logs steps before it closes the attempt, and in that opposite order two of them could
    # deadlock on each other's counter rows. It also holds the busiest rows for the least time.
    "CREATE CONSTRAINT TRIGGER fulfilments_counted AFTER INSERT OR UPDATE OF status "
    "ON fulfilments DEFERRABLE INITIALLY DEFERRED "
    "FOR EACH ROW EXECUTE FUNCTION count_fulfilment_outcome()",
)

SEED_OUTCOMES = """
INSERT INTO outcome_counts (status, error_code, count)
SELECT status, error_code, count(*) FROM fulfilments WHERE status <> 'running'
GROUP BY status, error_code
"""

SEED_STEPS = f"""
INSERT INTO step_counts (step, outcome, count, sum_ms, {", ".join(BUCKETS)})
SELECT step, outcome, count(*), coalesce(sum(duration_ms), 0),
       {", ".join(f"sum({_in_bucket('duration_ms', b)})" for b in BOUNDS_MS)}
FROM fulfilment_steps GROUP BY step, outcome
"""


def upgrade() -> None:
    op.create_table(
        "outcome_counts",
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(40), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("status", "error_code"),
    )
    op.create_table(
        "step_counts",
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("sum_ms", sa.Float, nullable=False),
        *(sa.Column(name, sa.Integer, nullable=False) for name in BUCKETS),
        sa.PrimaryKeyConstraint("step", "outcome"),
    )
    op.create_index("ix_fulfilments_status", "fulfilments", ["status"])
    op.execute(SEED_OUTCOMES)
    op.execute(SEED_STEPS)
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRES_TRIGGERS if postgres else SQLITE_TRIGGERS:
        op.execute(statement)
    if postgres:
        # Every counted write leaves a dead version of a counter row: vacuum these few-row
        # tables after a thousand of them, not after a fifth of the table (the default), so a
        # burst of orders never leaves a scrape reading megabytes to find a dozen rows.
        for table in ("step_counts", "outcome_counts"):
            op.execute(
                f"ALTER TABLE {table} SET (autovacuum_vacuum_scale_factor = 0, "
                "autovacuum_vacuum_threshold = 1000, autovacuum_analyze_threshold = 1000)"
            )
    # The hand-written migrations' bookkeeping; alembic_version replaces it.
    op.execute("DROP TABLE IF EXISTS schema_version")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS fulfilments_counted ON fulfilments")
        op.execute("DROP TRIGGER IF EXISTS fulfilment_steps_counted ON fulfilment_steps")
        op.execute("DROP FUNCTION IF EXISTS count_fulfilment_outcome()")
        op.execute("DROP FUNCTION IF EXISTS count_fulfilment_step()")
    else:
        for name in ("fulfilments_counted_update", "fulfilments_counted_insert"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TRIGGER IF EXISTS fulfilment_steps_counted")
    op.drop_index("ix_fulfilments_status", "fulfilments")
    op.drop_table("step_counts")
    op.drop_table("outcome_counts")
