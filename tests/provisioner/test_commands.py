"""`provisioner mappings` and `provisioner status` against a real database."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from provisioner.commands import account_mappings, order_status
from worker.records import FAILED, Records, StepRecord

ACCOUNT = "0015g00000XYZ12AAH"
ORDER = "8015g00000AbCdEAAV"


def command(module, *argv: str) -> int:
    """Run one provisioner command the way provisioner/cli.py dispatches it."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


@pytest.fixture
def database(sqlite_url, sqlite_engine, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    return Records(sqlite_engine)


def test_mappings_set_import_and_list(database, tmp_path, capsys):
    assert command(account_mappings, "set", ACCOUNT[:15], "42", "--note", "ticket 7") == 0
    assert database.client_for_account(ACCOUNT) == 42  # stored in the 18-character form
    csv_path = tmp_path / "map.csv"
    csv_path.write_text(
        "AccountId,ClientId,note\n0015g00000XYZ13AAH,43,\n0015g00000XYZ14AAH,44,b\n"
    )
    assert command(account_mappings, "import", str(csv_path)) == 0
    capsys.readouterr()
    assert command(account_mappings, "list") == 0
    out = capsys.readouterr().out
    assert ACCOUNT in out and "ticket 7" in out and "0015g00000XYZ14AAH" in out


@pytest.mark.parametrize(
    "content",
    [
        "AccountId,ClientId\n0015g00000XYZ13AAH,43\nnot-an-id,44\n",
        "AccountId,ClientId\n0015g00000XYZ13AAH,zero\n",
        "Account,Client\n0015g00000XYZ13AAH,43\n",
        "AccountId,ClientId\n",
    ],
)
def test_a_bad_csv_imports_nothing(database, tmp_path, content, capsys):
    csv_path = tmp_path / "map.csv"
    csv_path.write_text(content)
    assert command(account_mappings, "import", str(csv_path)) == 1
    assert database.mappings() == []
    assert "provisioner mappings:" in capsys.readouterr().err


def test_status_prints_the_timeline(database, capsys):
    now = datetime(2026, 4, 9, 18, 31, 40, tzinfo=UTC)
    attempt = database.begin(order_id=ORDER, job_id="evt-1", event_uuid="u-1", now=now)
    database.save(
        attempt.id,
        [
            StepRecord("validation", "ok", 3.0, at=now),
            StepRecord("payment_method", "failed", 20.0, "409: Payment method missing", now),
        ],
        status=FAILED,
        error_code="409",
        error_message="Payment method missing",
        finished_at=now,
    )
    assert command(order_status, ORDER[:15]) == 0
    out = capsys.readouterr().out
    assert "Attempt 1  FAILED  job evt-1" in out
    assert "error 409: Payment method missing" in out
    assert "payment_method" in out and "validation" in out
    assert command(order_status, "8015g00000AbCdFAAV") == 1
    assert command(order_status, "'; DROP TABLE") == 2
