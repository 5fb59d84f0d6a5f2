"""The per-order lease and the in-flight registry, on a real Redis."""

from __future__ import annotations

import time

from shared import keys
from worker import lease as leases

ORDER = "8015g00000AbCdEAAV"


def test_one_holder_at_a_time_and_only_the_holder_releases(redis_conn):
    first = leases.Lease(redis_conn, ORDER, 5)
    second = leases.Lease(redis_conn, ORDER, 5)
    assert first.acquire()
    assert not second.acquire()
    assert not second.release()  # compare-and-delete: a stranger's token does nothing
    assert first.held()
    assert first.release()
    assert second.acquire()
    assert not first.held() and first.lost.is_set()


def test_the_lease_expires_unless_renewed(redis_conn):
    lease = leases.Lease(redis_conn, ORDER, 0.3)
    assert lease.acquire()
    with lease.kept_alive():
        time.sleep(0.8)
        assert lease.held()
    time.sleep(0.5)
    assert not leases.lease_exists(redis_conn, ORDER)


def test_renewal_notices_a_lease_taken_over(redis_conn):
    lease = leases.Lease(redis_conn, ORDER, 0.3)
    assert lease.acquire()
    redis_conn.set(keys.order_lock_key(ORDER), "someone-else")
    with lease.kept_alive():
        assert lease.lost.wait(2)
    assert redis_conn.get(keys.order_lock_key(ORDER)) == b"someone-else"


def test_inflight_entries_are_removed_only_by_their_writer(redis_conn):
    entry = leases.InflightEntry("evt-1", "tok", 1.0, "host.1")
    raw = leases.register(redis_conn, ORDER, entry)
    assert leases.InflightEntry.loads(leases.entries(redis_conn)[ORDER]) == entry
    newer = leases.register(redis_conn, ORDER, leases.InflightEntry("evt-2", "tok2", 2.0, "h.2"))
    assert not leases.unregister(redis_conn, ORDER, raw)
    assert leases.unregister(redis_conn, ORDER, newer)
    assert leases.entries(redis_conn) == {}
    assert leases.InflightEntry.loads(b"not json") is None
