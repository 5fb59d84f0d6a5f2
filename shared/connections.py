"""The one place Redis clients and the database engine are built (never at import time)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import NullPool

from shared.config import RedisSettings
from shared.errors import RedisUnavailable

# Every Redis call must fail within seconds when the server is gone, except blocking reads such
# as RQ's dequeue, which set their own longer socket timeout.
REDIS_SOCKET_TIMEOUT = 5.0
REDIS_CONNECT_TIMEOUT = 3.0
# A Sentinel failover is an expected event: the primary is gone for down-after-milliseconds plus
# an election (about 2 s with 1 s detection, see the README). A command that meets it retries with
# backoff (0.2, 0.4, 0.8, then 1 s) for about 10 s instead of failing a job or stopping RQ's
# worker loop; set Sentinel's down-after-milliseconds well below that.
FAILOVER_RETRY = Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=12)


def redis_client(
    target: str | RedisSettings, *, socket_timeout: float | None = REDIS_SOCKET_TIMEOUT
) -> redis.Redis:
    """The client every process uses: a URL (plain, rediss://, ACL user in it) or the settings,
    which add a private CA and Sentinel. With Sentinel the client asks the Sentinels for the
    primary on every new connection, so after a failover the next command reaches the new one."""
    where = target if isinstance(target, RedisSettings) else RedisSettings(target)
    options: dict[str, Any] = {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
        "socket_timeout": socket_timeout,
        "health_check_interval": 30,
        "decode_responses": False,
    }
    tls = _tls(where)
    if not where.sentinels:
        # ssl_cert_reqs stays "required" (redis-py's default for rediss://): never unverified.
        return redis.Redis.from_url(
            where.url, **options, **{k: v for k, v in tls.items() if k != "ssl"}
        )
    return _sentinel_primary(where, options, tls)


def _tls(where: RedisSettings) -> dict[str, Any]:
    if urlsplit(where.url).scheme != "rediss":
        return {}
    return {"ssl": True, **({"ssl_ca_certs": where.ca_bundle} if where.ca_bundle else {})}


def _sentinel_primary(
    where: RedisSettings, options: dict[str, Any], tls: dict[str, Any]
) -> redis.Redis:
    """redis-py's Sentinel client (RQ's SENTINEL setting builds the same): the URL gives the
    primary's credentials and database, the Sentinels share its TLS settings."""
    from_url = parse_url(where.url)
    primary = {k: from_url[k] for k in ("username", "password", "db") if k in from_url}
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        **tls,
    }
    if where.sentinel_password:
        sentinel_options["password"] = where.sentinel_password
    sentinel = Sentinel(list(where.sentinels), sentinel_kwargs=sentinel_options)
    return sentinel.master_for(
        where.sentinel_master,
        **options,
        **{k: v for k, v in tls.items() if k != "ssl"},
        **primary,
        connection_class=_RediscoveringSSL if tls else _Rediscovering,
        retry=FAILOVER_RETRY,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


class _Rediscovering(SentinelManagedConnection):
    """A Sentinel-managed connection that asks the Sentinels again when a command's retry
    reconnects. redis-py 8.1 does so only for a connection taken from the pool: a command that
    meets the failover retries against the dead primary's cached address until it gives up."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().send_packed_command(command, check_health)


class _RediscoveringSSL(_Rediscovering, SentinelManagedSSLConnection):
    pass


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
