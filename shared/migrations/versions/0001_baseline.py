"""Baseline: the schema the hand-written migrations list made (its version 1).

A database that list made is stamped here by shared.db.upgrade without any change. Written out
in full, not with metadata.create_all, so that later model changes never alter what it creates.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_mappings",
        sa.Column("sf_account_id", sa.String(18), primary_key=True),
        sa.Column("whmcs_client_id", sa.Integer, nullable=False),
        sa.Column("note", sa.String(255), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "fulfilments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sf_order_id", sa.String(18), nullable=False),
        sa.Column("job_id", sa.String(80), nullable=False),
        sa.Column("event_uuid", sa.String(64), nullable=False),
        sa.Column("replay_id", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("worker", sa.String(120), nullable=False),
        sa.Column("whmcs_client_id", sa.Integer),
        sa.Column("whmcs_order_id", sa.Integer),
        sa.Column("whmcs_service_ids", sa.String(255), nullable=False),
        sa.Column("whmcs_invoice_id", sa.Integer),
        sa.Column("create_started_at", sa.DateTime(timezone=True)),
        sa.Column("accepted_at", sa.DateTime(timezone=True)),
        sa.Column("error_code", sa.String(40), nullable=False),
        sa.Column("error_message", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_fulfilments_sf_order_id", "fulfilments", ["sf_order_id"])
    op.create_index("ix_fulfilments_whmcs_order_id", "fulfilments", ["whmcs_order_id"])
    op.create_table(
        "fulfilment_steps",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "fulfilment_id",
            sa.Integer,
            sa.ForeignKey("fulfilments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("detail", sa.String(500), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_fulfilment_steps_fulfilment_id", "fulfilment_steps", ["fulfilment_id"])


def downgrade() -> None:
    op.drop_table("fulfilment_steps")
    op.drop_table("fulfilments")
    op.drop_table("account_mappings")
