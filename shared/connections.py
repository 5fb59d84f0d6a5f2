"""The one place Redis clients and the database engine are built (never at import time)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import NullPool

from shared.errors import RedisUnavailable

# Every Redis call must fail within seconds when the server is gone, except blocking reads such
# as RQ's dequeue, which set their own longer socket timeout.
REDIS_SOCKET_TIMEOUT = 5.0


def redis_client(url: str, *, socket_timeout: float | None = REDIS_SOCKET_TIMEOUT) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=3.0,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        decode_responses=False,
    )


@contextlib.contextmanager
def redis_unavailable(what: str) -> Iterator[None]:
    """Where a job talks to Redis: an outage becomes RedisUnavailable (EREDIS), not a library
    exception. Other Redis errors (a wrong type, a script error) are bugs and stay as they are."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnavailable(f"Redis unavailable ({what}): {type(exc).__name__}") from exc


def database_engine(url: str, *, connect_timeout: float = 5.0, pooled: bool = True) -> Engine:
    """`pooled=False` opens a fresh connection per use: for probes, which must never wait on a
    pooled connection that a hung probe still holds."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": connect_timeout})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    pool: dict[str, Any] = (
        {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2}
        if pooled
        else {"poolclass": NullPool}
    )
    return create_engine(
        url, connect_args={"connect_timeout": max(1, int(connect_timeout))}, **pool
    )


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the health app read while a worker writes; busy_timeout rides out short locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
