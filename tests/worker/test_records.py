"""The fulfilment records and account mappings, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker.records import FAILED, RUNNING, Records, StepRecord

ORDER = "8015g00000AbCdEAAV"
NOW = datetime(2026, 4, 9, 18, 31, 40, tzinfo=UTC)


def test_attempts_are_numbered_and_checkpointed(any_engine):
    records = Records(any_engine)
    first = records.begin(order_id=ORDER, job_id="evt-1", event_uuid="u1", replay_id="7", now=NOW)
    assert (first.attempt, first.status) == (1, RUNNING)
    records.save(
        first.id,
        [StepRecord("validation", "ok", 12.5, at=NOW), StepRecord("mapping", "ok", 1.0, at=NOW)],
        step="whmcs_create",
        whmcs_client_id=1,
        create_started_at=NOW,
    )
    assert records.get(first.id).create_outcome_unknown
    records.save(first.id, whmcs_order_id=42, whmcs_service_ids=(7, 8), whmcs_invoice_id=9)
    saved = records.get(first.id)
    assert not saved.create_outcome_unknown
    assert (saved.whmcs_order_id, saved.whmcs_service_ids, saved.whmcs_invoice_id) == (
        42,
        (7, 8),
        9,
    )
    assert saved.create_started_at == NOW  # timezone-aware on both databases

    second = records.begin(order_id=ORDER, job_id="evt-2", now=NOW + timedelta(minutes=1))
    assert second.attempt == 2
    earlier = records.earlier(ORDER, second.id)
    assert [a.id for a in earlier] == [first.id]


def test_a_new_leaseholder_closes_attempts_left_running(any_engine):
    records = Records(any_engine)
    dead = records.begin(order_id=ORDER, job_id="evt-1", now=NOW)
    records.begin(order_id=ORDER, job_id="evt-dup", now=NOW, supersede=False)
    assert records.get(dead.id).status == RUNNING
    records.begin(order_id=ORDER, job_id="evt-2", now=NOW)
    closed = records.get(dead.id)
    assert (closed.status, closed.error_code) == (FAILED, "WORKER_LOST")


def test_history_and_lookup_by_job(any_engine):
    records = Records(any_engine)
    a = records.begin(order_id=ORDER, job_id="evt-1", now=NOW)
    records.save(
        a.id,
        [StepRecord("validation", "ok", 1.0, "fine", NOW)],
        status=FAILED,
        error_code="409",
        error_message="x" * 400,
    )
    records.begin(order_id="801000000000000AAA", job_id="evt-other", now=NOW)
    history = records.history(ORDER)
    assert len(history) == 1
    attempt, steps = history[0]
    assert attempt.error_code == "409" and len(attempt.error_message) == 255
    assert [(s.step, s.outcome, s.detail) for s in steps] == [("validation", "ok", "fine")]
    assert records.by_job(ORDER, "evt-1").id == a.id
    assert records.by_job(ORDER, "evt-none") is None


def test_mappings_replace_and_list(any_engine):
    records = Records(any_engine)
    assert records.client_for_account("001000000000001AAA") is None
    assert records.set_mappings([("001000000000001AAA", 5, "first")], NOW) == 1
    records.set_mappings([("001000000000001AAA", 6, ""), ("001000000000002AAA", 7, "")], NOW)
    assert records.client_for_account("001000000000001AAA") == 6
    listed = records.mappings()
    assert [(m["sf_account_id"], m["whmcs_client_id"]) for m in listed] == [
        ("001000000000001AAA", 6),
        ("001000000000002AAA", 7),
    ]
    assert listed[0]["updated_at"] == NOW
