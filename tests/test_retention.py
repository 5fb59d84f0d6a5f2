"""`provisioner db prune`: what goes, what stays, on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from provisioner.commands import database_admin
from shared import db, retention

NOW = datetime(2026, 12, 1, tzinfo=UTC)
OLD, RECENT = NOW - timedelta(days=200), NOW - timedelta(days=10)
CUTOFF = NOW - retention.DEFAULT_AGE


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("90d", timedelta(days=90)),
        ("90", timedelta(days=90)),
        ("12w", timedelta(weeks=12)),
        ("36h", timedelta(hours=36)),
        ("30m", timedelta(minutes=30)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_parse_age(text, age):
    assert retention.parse_age(text) == age


@pytest.mark.parametrize("text", ["", "0d", "-1d", "1y", "1.5d", "d"])
def test_parse_age_refuses(text):
    with pytest.raises(ValueError, match="not an age"):
        retention.parse_age(text)


def attempt(engine: Engine, order: str, status: str, finished_at=None, steps: int = 2) -> int:
    with engine.begin() as conn:
        fid = conn.execute(
            db.fulfilments.insert().values(
                sf_order_id=order, status=status, finished_at=finished_at, started_at=OLD
            )
        ).inserted_primary_key[0]
        conn.execute(
            db.fulfilment_steps.insert(),
            [
                {"fulfilment_id": fid, "step": f"s{n}", "outcome": "ok", "duration_ms": 5}
                for n in range(steps)
            ],
        )
    return fid


def surviving(engine: Engine) -> dict[int, int]:
    """Attempt id -> its step rows."""
    f, s = db.fulfilments, db.fulfilment_steps
    query = (
        select(f.c.id, func.count(s.c.id))
        .select_from(f.outerjoin(s, s.c.fulfilment_id == f.c.id))
        .group_by(f.c.id)
    )
    with engine.connect() as conn:
        return dict(conn.execute(query).all())


def counters(engine: Engine) -> tuple[list, list]:
    with engine.connect() as conn:
        return (
            sorted(conn.execute(select(db.outcome_counts)).all()),
            sorted(conn.execute(select(db.step_counts)).all()),
        )


def test_prune_keeps_what_is_running_recent_or_an_orders_last_word(any_engine):
    a1 = attempt(any_engine, "A", "failed", OLD)  # superseded by a2: goes
    a2 = attempt(any_engine, "A", "activated", OLD)  # A's newest: row stays, steps go
    b1 = attempt(any_engine, "B", "failed", OLD)  # B's newest failed: a retry resumes from it
    c1 = attempt(any_engine, "C", "skipped", OLD)  # superseded by a running attempt: goes
    c2 = attempt(any_engine, "C", "running")  # running: untouched
    d1 = attempt(any_engine, "D", "running", OLD)  # outcome not delivered yet: untouched
    e1 = attempt(any_engine, "E", "activated", RECENT)  # younger than the cutoff
    e2 = attempt(any_engine, "E", "activated", RECENT)
    before = counters(any_engine)

    pruned = retention.prune(any_engine, CUTOFF, batch=2)  # batches smaller than the work

    assert pruned == retention.Pruned(attempts=2, steps=8)
    assert surviving(any_engine) == {a2: 0, b1: 0, c2: 2, d1: 2, e1: 2, e2: 2}
    assert a1 not in surviving(any_engine) and c1 not in surviving(any_engine)
    assert counters(any_engine) == before  # Prometheus counters never go down
    assert retention.prune(any_engine, CUTOFF) == retention.Pruned()  # nothing left to do


def test_db_prune_command(sqlite_url, sqlite_engine, monkeypatch, capsys):
    now = datetime.now(UTC)
    attempt(sqlite_engine, "A", "failed", now - timedelta(days=40))
    attempt(sqlite_engine, "A", "activated", now - timedelta(days=40))
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    parser = argparse.ArgumentParser()
    database_admin.add_arguments(parser)

    assert database_admin.run(parser.parse_args(["prune"])) == 0  # the default age keeps 40 days
    assert "pruned 0 attempts" in capsys.readouterr().out
    assert database_admin.run(parser.parse_args(["prune", "--older-than", "30d"])) == 0
    assert "pruned 1 attempts and 4 step rows" in capsys.readouterr().out
