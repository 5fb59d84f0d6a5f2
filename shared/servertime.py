"""Redis server time: the one clock every host agrees on.

Workers and subscribers run on several hosts whose clocks may disagree by seconds. Wherever one
process writes a timestamp that another compares with its own "now" (the in-flight registry's
started_at, the subscriber heartbeat, the reaper's judgement of a job's age), both sides read
Redis's TIME instead of their own clock. Expiries (leases, the leader lock) are Redis TTLs and
need no clock at all; durations inside one process keep using time.monotonic().
"""

from __future__ import annotations

from typing import Any


def server_now(connection: Any) -> float:
    """Epoch seconds by the Redis server's clock (one round trip; Redis errors pass through)."""
    seconds, micros = connection.time()
    return int(seconds) + int(micros) / 1_000_000


def offset(local_before: float, server: float, local_after: float) -> float:
    """How far a host's clock is ahead of the server's, from one TIME call timed by the host
    (the server answered about halfway through the round trip)."""
    return (local_before + local_after) / 2 - server
