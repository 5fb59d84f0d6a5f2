"""`provisioner replay show | set | reset` against real Redis."""

from __future__ import annotations

import argparse
import json

import pytest

from provisioner.commands import replay_position
from shared import keys
from shared.config import DEFAULT_CHANNEL
from subscriber.heartbeat import Heartbeat


@pytest.fixture
def run(redis_url, redis_conn, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("SF_PROVISION_EVENT_CHANNEL", raising=False)
    monkeypatch.delenv("SF_EVENTS_REPLAY", raising=False)
    monkeypatch.delenv("SF_EVENTS_TRANSPORT", raising=False)

    def run(*argv: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser()
        replay_position.add_arguments(parser)
        code = replay_position.run(parser.parse_args(argv))
        return code, capsys.readouterr().out

    return run


def stored(redis_conn) -> bytes | None:
    return redis_conn.get(keys.replay_key(DEFAULT_CHANNEL))


def test_set_then_show_then_reset(run, redis_conn):
    code, out = run("set", "4711")
    assert code == 0 and "none -> 4711" in out
    assert stored(redis_conn) == b"4711"
    code, out = run("show")
    assert code == 0
    assert "stored replay id: 4711" in out
    assert "no heartbeat" in out
    code, out = run("reset")
    assert code == 0 and stored(redis_conn) is None


def test_set_minus_two_is_the_backfill_position(run, redis_conn):
    code, out = run("set", "-2")
    assert code == 0 and "every retained event" in out
    assert stored(redis_conn) == b"-2"


def test_set_refuses_nonsense(run, redis_conn):
    code, _ = run("set", "-5")
    assert code == 2
    assert stored(redis_conn) is None


def test_show_reports_heartbeat_and_gaps(run, redis_conn):
    heartbeat = Heartbeat(redis_conn, DEFAULT_CHANNEL, "host:7")
    heartbeat.connected(advised_timeout=110)
    heartbeat.record_fallback(123, -1, "400::The replayId {123} you provided was invalid.")
    code, out = run("show")
    assert code == 0
    assert "connected on host:7" in out
    assert "replay fallbacks: 1" in out
    assert "requested 123 -> fell back to -1" in out
    record = json.loads(redis_conn.lindex(keys.gaps_key(DEFAULT_CHANNEL), 0))
    assert record["requested"] == 123


def test_channel_option(run, redis_conn):
    run("--channel", "/event/Other__e", "set", "5")
    assert redis_conn.get(keys.replay_key("/event/Other__e")) == b"5"


def test_pubsub_position_is_hex_under_its_own_key(run, redis_conn):
    run("set", "4711")  # CometD's, untouched below
    code, out = run("--transport", "pubsub", "set", "0000000000001267")
    assert code == 0 and "none -> 0000000000001267 (4711)" in out
    assert redis_conn.get(keys.pubsub_replay_key(DEFAULT_CHANNEL)) == b"0000000000001267"
    code, out = run("--transport", "pubsub", "show")
    assert code == 0
    assert "transport:        pubsub" in out
    assert "stored replay id: 0000000000001267 (4711)" in out
    assert "next start:       CUSTOM at process start" not in out  # described by its id
    assert "0000000000001267 at process start" in out
    code, _ = run("--transport", "pubsub", "reset")
    assert code == 0 and redis_conn.get(keys.pubsub_replay_key(DEFAULT_CHANNEL)) is None
    assert stored(redis_conn) == b"4711"


def test_pubsub_set_refuses_what_is_not_hex(run, redis_conn):
    code, out = run("--transport", "pubsub", "set", "-2")
    assert code == 2 and "hex" in out
    assert redis_conn.get(keys.pubsub_replay_key(DEFAULT_CHANNEL)) is None


def test_the_transport_comes_from_the_settings(run, redis_conn, monkeypatch):
    monkeypatch.setenv("SF_EVENTS_TRANSPORT", "pubsub")
    code, out = run("show")
    assert code == 0 and "transport:        pubsub" in out
