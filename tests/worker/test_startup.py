"""`python -m worker` start-up: help, missing settings, a database without the schema."""

from __future__ import annotations

import subprocess
import sys

from shared import db
from shared.connections import database_engine


def _run_worker(env, *args):
    base = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_help():
    done = _run_worker({}, "--help")
    assert done.returncode == 0 and "--worker-class" in done.stdout and "--burst" in done.stdout


def test_worker_names_missing_variables_and_exits_2():
    done = _run_worker({})
    assert done.returncode == 2
    for name in ("SF_LOGIN_URL", "PORTAL_PRICEBOOK_ID", "WHMCS_API_URL"):
        assert name in done.stderr


def test_worker_refuses_a_database_without_the_schema(tmp_path, app_env):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = database_engine(url)
    with engine.connect():
        pass
    done = _run_worker({**app_env, "DATABASE_URL": url}, "--burst")
    assert done.returncode == 2
    assert "provisioner db upgrade" in done.stderr
    db.upgrade(engine)
    engine.dispose()
