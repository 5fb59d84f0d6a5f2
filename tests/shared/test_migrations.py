"""Alembic migrations on SQLite and PostgreSQL: an empty database, one the old list made, the
models against the migrated schema, `provisioner db check`, and the counters' triggers."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, case, func, inspect, select

from provisioner.commands import database_admin
from shared import db
from shared.connections import database_engine
from tests import legacy_schema
from tests.fixtures.infra import new_postgres_database
from worker.records import Records, StepRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ORDER = "8015g00000ABCDEAAA"


@pytest.fixture(params=["sqlite", "postgres"])
def empty_engine(request, tmp_path) -> Iterator[Engine]:
    """A database with no table at all, once on each dialect."""
    if request.param == "sqlite":
        engine = database_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
        yield engine
        engine.dispose()
        return
    with new_postgres_database() as url:
        engine = database_engine(url)
        yield engine
        engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def differences(engine: Engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, db.metadata)


def db_command(url: str, monkeypatch, *argv: str) -> int:
    monkeypatch.setenv("DATABASE_URL", url)
    parser = argparse.ArgumentParser()
    database_admin.add_arguments(parser)
    return database_admin.run(parser.parse_args(argv))


def test_an_empty_database_is_upgraded_to_head(empty_engine):
    assert db.upgrade(empty_engine) == (None, db.head())
    assert tables(empty_engine) == {*db.metadata.tables, "alembic_version"}
    db.check(empty_engine)
    assert db.upgrade(empty_engine) == (db.head(), db.head())  # the second run changes nothing


def test_the_models_match_the_migrated_schema(empty_engine):
    db.upgrade(empty_engine)
    assert differences(empty_engine) == []


def test_a_database_the_old_list_made_is_adopted_with_its_rows(empty_engine):
    legacy_schema.create_legacy_database(empty_engine)
    with empty_engine.begin() as conn:
        fid = conn.execute(
            legacy_schema.fulfilments.insert().values(
                sf_order_id=ORDER, status="failed", error_code="409", finished_at=T0
            )
        ).inserted_primary_key[0]
        conn.execute(
            legacy_schema.fulfilment_steps.insert(),
            [
                {"fulfilment_id": fid, "step": "mapping", "outcome": "ok", "duration_ms": 40},
                {"fulfilment_id": fid, "step": "mapping", "outcome": "ok", "duration_ms": 400},
            ],
        )
    assert db.upgrade(empty_engine) == (db.BASELINE, db.head())

    assert "schema_version" not in tables(empty_engine)
    assert differences(empty_engine) == []
    db.check(empty_engine)
    with empty_engine.connect() as conn:
        assert conn.execute(select(db.fulfilments.c.id)).scalars().all() == [fid]
        # the totals start from the history already there
        assert conn.execute(select(db.outcome_counts)).all() == [("failed", "409", 1)]
        step = conn.execute(select(db.step_counts)).one()._mapping
    assert (step["count"], step["sum_ms"], step["le_0"], step["le_2"], step["le_3"]) == (
        2,
        440.0,
        1,
        1,
        2,
    )


def test_the_baseline_revision_builds_exactly_the_old_schema(empty_engine):
    """An old database is stamped at the baseline, not migrated: so the baseline revision must
    build what the old list built, table for table and index for index."""
    with empty_engine.begin() as conn:
        command.upgrade(db.alembic_config(conn), db.BASELINE)
    with empty_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, legacy_schema.metadata)
    # schema_version is the old list's bookkeeping, which alembic_version replaces
    assert [d[0] for d in diff] == ["add_table"]
    assert diff[0][1].name == "schema_version"


def test_check_refuses_an_empty_or_old_database(empty_engine):
    with pytest.raises(db.SchemaError, match="provisioner db upgrade"):
        db.check(empty_engine)
    legacy_schema.create_legacy_database(empty_engine)
    with pytest.raises(db.SchemaError, match=f"revision {db.BASELINE}"):
        db.check(empty_engine)


def test_db_check_exit_code_says_whether_the_schema_is_current(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert db_command(url, monkeypatch, "check") == database_admin.EXIT_STALE
    assert "provisioner db upgrade" in capsys.readouterr().out
    assert db_command(url, monkeypatch, "upgrade") == 0
    assert f"schema at revision {db.head()}" in capsys.readouterr().out
    assert db_command(url, monkeypatch, "check") == 0
    assert "current" in capsys.readouterr().out


def test_db_check_tells_an_unreachable_database_apart(monkeypatch, capsys):
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # nothing listens on port 1
    assert db_command(url, monkeypatch, "check") == database_admin.EXIT_UNREACHABLE
    assert "unreachable" in capsys.readouterr().out


def test_hosts_upgrading_at_once_migrate_once():
    """Every host may run `provisioner db upgrade` as it starts: on PostgreSQL an advisory lock
    lets one migrate while the others wait, then find nothing to do."""
    with new_postgres_database() as url:
        env = {**os.environ, "DATABASE_URL": url}
        hosts = [
            subprocess.Popen(
                [sys.executable, "-m", "provisioner.cli", "db", "upgrade"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        said = sorted(host.communicate(timeout=60)[0].strip() for host in hosts)
        assert [host.returncode for host in hosts] == [0, 0, 0]
        head = db.head()
        assert said == sorted(
            [f"schema at revision {head} (was empty)"]
            + 2 * [f"schema at revision {head} (was {head})"]
        )


# --- the counters' triggers ---------------------------------------------------------------------


def history_totals(engine: Engine) -> tuple[set, set]:
    """What the counters must equal while nothing is pruned: the old GROUP BY over the history."""
    f, s = db.fulfilments, db.fulfilment_steps
    buckets = [
        func.sum(case((s.c.duration_ms <= bound * 1000, 1), else_=0)) for bound in db.STEP_BUCKETS
    ]
    with engine.connect() as conn:
        outcomes = conn.execute(
            select(f.c.status, f.c.error_code, func.count())
            .where(f.c.status != "running")
            .group_by(f.c.status, f.c.error_code)
        ).all()
        steps = conn.execute(
            select(
                s.c.step, s.c.outcome, func.count(), func.sum(s.c.duration_ms), *buckets
            ).group_by(s.c.step, s.c.outcome)
        ).all()
    return {tuple(r) for r in outcomes}, {tuple(r) for r in steps}


def counter_totals(engine: Engine) -> tuple[set, set]:
    with engine.connect() as conn:
        outcomes = conn.execute(select(db.outcome_counts)).all()
        steps = conn.execute(select(db.step_counts)).all()
    return {tuple(r) for r in outcomes}, {tuple(r) for r in steps}


def test_counters_follow_every_write_of_the_history(any_engine):
    """Inserted finished, inserted running then finished, re-saved unchanged, steps in bulk."""
    f, s = db.fulfilments, db.fulfilment_steps
    with any_engine.begin() as conn:
        done = conn.execute(
            f.insert().values(sf_order_id=ORDER, status="skipped")
        ).inserted_primary_key[0]
        running = conn.execute(
            f.insert().values(sf_order_id=ORDER, status="running")
        ).inserted_primary_key[0]
        conn.execute(
            s.insert(),
            [
                {"fulfilment_id": running, "step": step, "outcome": outcome, "duration_ms": ms}
                for step, outcome, ms in (
                    ("mapping", "ok", 12.5),
                    ("whmcs_create", "ok", 7_000),
                    ("whmcs_create", "failed", 130_000),
                    ("mapping", "ok", 60),
                )
            ],
        )
    assert counter_totals(any_engine) == history_totals(any_engine)
    with any_engine.begin() as conn:
        conn.execute(f.update().where(f.c.id == running).values(status="failed", error_code="503"))
    with any_engine.begin() as conn:  # the same status written again is not a second outcome
        conn.execute(f.update().where(f.c.id == running).values(status="failed", step="x"))
        conn.execute(f.update().where(f.c.id == done).values(step="y"))
    assert counter_totals(any_engine) == history_totals(any_engine)
    assert ("failed", "503", 1) in counter_totals(any_engine)[0]


def test_counters_start_empty_after_upgrade(empty_engine):
    db.upgrade(empty_engine)
    assert counter_totals(empty_engine) == (set(), set())


def test_counters_stay_exact_under_concurrent_workers(postgres_engine):
    """Four threads write the way workers do (Records, the real code), each on its own
    connection: orders begun with steps and finished, and every fifth one begun by a worker that
    dies, then superseded by the next. Whatever the interleaving, no transaction deadlocks on a
    counter row and the totals equal the history."""
    records = Records(postgres_engine)

    def work(thread: int) -> None:
        for n in range(25):
            order = f"8015g0000{thread:02d}{n:05d}AA"
            steps = [StepRecord("validation", "ok", 3.0), StepRecord("mapping", "ok", 70.0)]
            if n % 5 == 0:  # a worker that dies after its first steps
                records.begin(order_id=order, job_id=f"evt-{thread}-{n}-lost", now=T0, steps=steps)
            attempt = records.begin(order_id=order, job_id=f"evt-{thread}-{n}", now=T0, steps=steps)
            # activated, failed, or failed as the reaper closes an attempt (WORKER_LOST)
            outcome = [("activated", ""), ("failed", "503"), ("failed", "WORKER_LOST")][n % 3]
            records.save(
                attempt.id,
                [StepRecord("mapping", "ok", 5.0), StepRecord("whmcs_create", "ok", 900.0 + n)],
                status=outcome[0],
                error_code=outcome[1],
                finished_at=T0,
            )

    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(work, t) for t in range(4)]:
            done.result()  # re-raises a deadlock, had there been one
    assert counter_totals(postgres_engine) == history_totals(postgres_engine)
    assert ("failed", "WORKER_LOST", 20 + 32) in counter_totals(postgres_engine)[0]
