"""The databases a run owns: a fresh SQL database made and dropped, and a Redis database claimed.

A Redis database is claimed with a marker key holding the owner's pid: one that is empty, or whose
marker names this process or one that has ended, may be flushed; one that holds anything else
belongs to someone else and is never touched.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from shared import db
from shared.connections import database_engine, redis_client


@dataclass
class Database:
    url: str
    description: str
    admin_url: str | None = None  # the server's, when the database was made here (and is dropped)
    name: str = ""

    @classmethod
    def create(cls, admin_url: str, prefix: str, fallback_dir: Path | None = None) -> Database:
        """A fresh PostgreSQL database `<prefix>_<hex>` on the server at `admin_url`; SQLite in
        `fallback_dir` if asked for (`admin_url` "sqlite") or if the server is unreachable."""
        if admin_url.startswith("sqlite") and fallback_dir is not None:
            return cls.sqlite(fallback_dir / f"{prefix}.db", "SQLite (asked for)")
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        try:
            version = _admin(admin_url, f'CREATE DATABASE "{name}"')
        except SQLAlchemyError as exc:
            if fallback_dir is None:
                raise
            reason = f"SQLite, because PostgreSQL is unreachable ({type(exc).__name__})"
            return cls.sqlite(fallback_dir / f"{prefix}.db", reason)
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        return cls(url, f"PostgreSQL {version}", admin_url, name)

    @classmethod
    def sqlite(cls, path: Path, description: str = "SQLite") -> Database:
        return cls(f"sqlite:///{path}", description)

    @cached_property
    def engine(self) -> Engine:
        return database_engine(self.url)

    def migrate(self) -> Database:
        db.upgrade(self.engine)
        return self

    def drop(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
        if self.admin_url:
            _admin(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _admin(admin_url: str, statement: str) -> str:
    """Run one statement outside a transaction; returns the server's version."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
            conn.execute(text(statement))
            return str(version)
    finally:
        admin.dispose()


def claim_database(url: str, marker: str) -> bool:
    """Empty the Redis database for this process if it is empty, ours or a finished run's."""
    conn = redis_client(url)
    try:
        owner = conn.get(marker)
        ours = owner == str(os.getpid()).encode()
        if conn.dbsize() and not ours and (owner is None or _running(owner)):
            return False
        empty_database(conn, marker)
        return True
    finally:
        conn.close()


def empty_database(conn: redis.Redis, marker: str) -> None:
    """Flush a claimed database, keeping it marked as this process's."""
    conn.flushdb()
    conn.set(marker, str(os.getpid()))


def release_database(url: str, marker: str) -> None:
    """Leave the database as empty as it was found (if it is still this process's)."""
    conn = redis_client(url)
    try:
        if conn.get(marker) == str(os.getpid()).encode():
            conn.flushdb()
    except redis.RedisError:
        pass  # the server went away: nothing left to clean
    finally:
        conn.close()


def _running(owner: bytes) -> bool:
    """Whether the process that marked the database is still running (on this machine)."""
    try:
        os.kill(int(owner), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
