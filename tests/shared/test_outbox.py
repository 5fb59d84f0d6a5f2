"""The outbox's pure rules: back-off, due, the JSON it keeps, the summary health reads."""

from __future__ import annotations

import pytest

from shared import keys, outbox

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("attempts", "delay"), [(0, 5), (1, 5), (2, 10), (3, 20), (6, 160), (7, 300), (50, 300)]
)
def test_backoff_doubles_up_to_five_minutes(attempts, delay):
    assert outbox.backoff(attempts) == delay


def test_each_refusal_waits_longer_and_keeps_the_outcome():
    first = outbox.first("Failed", NOW, "403", code="409", message="no card", job_id="evt-1")
    assert (first.attempts, first.next_at, first.first_at) == (1, NOW + 5, NOW)
    assert not outbox.due(first, NOW + 4.9) and outbox.due(first, NOW + 5)
    again = outbox.refused_again(first, NOW + 5, "SF_AUTH")
    assert (again.attempts, again.next_at, again.last_error) == (2, NOW + 15, "SF_AUTH")
    assert (again.status, again.code, again.message, again.first_at) == (
        "Failed",
        "409",
        "no card",
        NOW,
    )


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"x"', b'{"code": "409"}', b"\xff"])
def test_an_unreadable_entry_is_none(raw):
    assert outbox.Waiting.loads(raw) is None


def test_an_entry_round_trips_and_ignores_unknown_fields():
    entry = outbox.first("Activated", NOW, "503", whmcs_order_id=1001)
    assert outbox.Waiting.loads(entry.dumps()) == entry
    assert outbox.Waiting.loads(entry.dumps()[:-1] + ',"later":1}') == entry


def test_summary_counts_every_entry_and_ages_the_oldest(redis_conn):
    assert outbox.summary(redis_conn, NOW) == (0, None)
    outbox.put(redis_conn, "a", outbox.first("Failed", NOW - 60, "503"))
    outbox.put(redis_conn, "b", outbox.first("Activated", NOW - 600, "SF_AUTH"))
    redis_conn.hset(keys.OUTBOX, "c", b"garbage")
    assert outbox.summary(redis_conn, NOW) == (3, 600.0)
    raw = redis_conn.hget(keys.OUTBOX, "a")
    outbox.remove(redis_conn, "a", b"not what it holds")
    assert redis_conn.hexists(keys.OUTBOX, "a")
    outbox.remove(redis_conn, "a", raw)
    assert not redis_conn.hexists(keys.OUTBOX, "a")
