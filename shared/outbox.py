"""Outcomes Salesforce did not take, kept in Redis until it does: the hash `prov:outbox`.

Field = Salesforce Order Id; value = the JSON of one `Waiting` outcome (status Activated or Failed,
code, message, WHMCS order id, first_at, attempts, next_at ...). A job whose terminal PATCH timed
out or was refused (5xx, SF_AUTH, 403, a 400 validation rule) writes its outcome here; the reaper
thread of every worker (worker/reaper.py) delivers it under the order's lease, backing off between
tries, and removes the entry once Salesforce took it. A later job that delivers its own outcome
on the order removes the older entry. The reconciler leaves alone the orders listed here.

Read by /health, /metrics and `provisioner doctor` (`summary`): how many wait, the oldest's age.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis

from shared import keys
from shared.logs import scrub

FIRST_DELAY = 5.0  # seconds before the first redelivery; doubled on each refusal ...
MAX_DELAY = 300.0  # ... up to this
_REMOVE_IF = (
    "if redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] then "
    "return redis.call('hdel', KEYS[1], ARGV[1]) end return 0"
)


@dataclass(frozen=True)
class Waiting:
    """One terminal outcome waiting for Salesforce to take it (epoch seconds)."""

    status: str  # Activated | Failed: what Activation_Status__c must read
    code: str = ""
    message: str = ""
    whmcs_order_id: int | None = None
    job_id: str = ""
    first_at: float = 0.0
    attempts: int = 1  # PATCHes tried so far (the job's own counts)
    next_at: float = 0.0
    last_error: str = ""  # the code of the last refusal

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, raw: bytes | str) -> Waiting | None:
        try:
            data = json.loads(raw)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError, AttributeError):
            return None


def backoff(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th refused delivery."""
    return min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, attempts - 1))


def first(status: str, now: float, last_error: str, **fields: Any) -> Waiting:
    """The entry for an outcome whose first PATCH (the job's) was not taken at `now`."""
    return Waiting(status, first_at=now, next_at=now + backoff(1), last_error=last_error, **fields)


def refused_again(waiting: Waiting, now: float, last_error: str) -> Waiting:
    attempts = waiting.attempts + 1
    return replace(
        waiting, attempts=attempts, next_at=now + backoff(attempts), last_error=last_error
    )


def due(waiting: Waiting, now: float) -> bool:
    return waiting.next_at <= now


def put(conn: redis.Redis, order_id: str, waiting: Waiting) -> None:
    # The message is already scrubbed of the configured secrets; scrub again for the ones this
    # process learnt (a minted token an error body might echo): it goes to Redis and Salesforce.
    conn.hset(keys.OUTBOX, order_id, replace(waiting, message=scrub(waiting.message)).dumps())


def entries(conn: redis.Redis) -> dict[str, bytes]:
    raw: dict[bytes, bytes] = conn.hgetall(keys.OUTBOX)  # type: ignore[assignment]
    return {k.decode(): v for k, v in raw.items()}


def remove(conn: redis.Redis, order_id: str, raw: bytes | None = None) -> None:
    """Drop the order's entry (only if it still reads `raw`, when given)."""
    if raw is None:
        conn.hdel(keys.OUTBOX, order_id)
    else:
        conn.eval(_REMOVE_IF, 1, keys.OUTBOX, order_id, raw)


def summary(conn: redis.Redis, now: float) -> tuple[int, float | None]:
    """How many outcomes wait, and the oldest one's age in seconds (None when none wait)."""
    waiting = [Waiting.loads(raw) for raw in entries(conn).values()]
    firsts = [w.first_at for w in waiting if w is not None and w.first_at]
    return len(waiting), (round(max(0.0, now - min(firsts)), 1) if firsts else None)
