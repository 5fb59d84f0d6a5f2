"""The subscriber as a real process against the sandbox: recovery, leadership, shutdown.

Assertions are on what lands in Redis (the RQ queue, the replay key, the heartbeat), never on
fulfilment: no worker runs here.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from sandbox.fixtures import standard_document
from sandbox.http import wait_until
from shared import keys
from shared.config import DEFAULT_CHANNEL
from subscriber.heartbeat import gaps
from subscriber.heartbeat import read as read_heartbeat
from subscriber.leader import LEADER_TTL

pytestmark = pytest.mark.slow

SUBSCRIBED = "Subscribed to platform event channel"
ENQUEUED = "Platform Event enqueued for provisioning"
RESTARTING = "Streaming session ended; reconnecting"
ORDER = "8015g00000ABCDEAA1"
TAKEOVER = LEADER_TTL + 20  # a dead leader's lock must expire first


def queued(conn: redis.Redis) -> list[dict[str, Any]]:
    """The job arguments in the provisioning queue, in queue order."""
    ids = [i.decode() for i in conn.lrange("rq:queue:provisioning", 0, -1)]
    return [Job.fetch(i, connection=conn, serializer=JSONSerializer).args[0] for i in ids]


def queued_uuids(conn: redis.Redis) -> list[str]:
    return [event["event_uuid"] for event in queued(conn)]


def stored_replay(conn: redis.Redis) -> int | None:
    raw = conn.get(keys.replay_key(DEFAULT_CHANNEL))
    return int(raw) if raw is not None else None


def publish(admin, order_id: str = ORDER) -> dict[str, Any]:
    return admin.publish({"OrderId__c": order_id})


def wait_for_jobs(conn: redis.Redis, count: int, subscriber, timeout: float = 30) -> None:
    ok = wait_until(lambda: len(queued(conn)) >= count, timeout=timeout)
    assert ok, f"{len(queued(conn))} of {count} jobs; log tail:\n{subscriber.text()[-3000:]}"


def start(services, env: dict[str, str], **extra: str):
    subscriber = services.start("subscriber", {**env, **extra})
    subscriber.wait_for_message(SUBSCRIBED, timeout=TAKEOVER)
    return subscriber


def messages(subscriber, text: str) -> list[dict[str, Any]]:
    return [line for line in subscriber.lines() if line.get("message") == text]


def fault_fired(admin, target: str, kind: str) -> bool:
    return any(h["target"] == target and h["kind"] == kind for h in admin.fault_history())


# The happy path and the log contract.


def test_an_approved_order_becomes_one_queued_job(app_env, sandbox_admin, redis_conn, services):
    refs = sandbox_admin.load(standard_document(orders=1))["refs"]
    subscriber = start(services, app_env)
    [line] = messages(subscriber, SUBSCRIBED)
    assert line["channel"] == DEFAULT_CHANNEL and line["replay_from"] == -1
    event = sandbox_admin.approve("o1")
    wait_for_jobs(redis_conn, 1, subscriber)
    [job] = queued(redis_conn)
    assert job["order_id"] == refs["o1"]
    assert job["event_uuid"] == event["event"]["EventUuid"]
    assert job["replay_id"] == event["event"]["replayId"]
    assert stored_replay(redis_conn) == event["event"]["replayId"]
    logged = subscriber.wait_for_message(ENQUEUED)
    assert logged["order_id"] == refs["o1"]
    assert logged["job_id"] == f"evt-{job['event_uuid']}"
    heartbeat = read_heartbeat(redis_conn, DEFAULT_CHANNEL)
    assert heartbeat["state"] == "connected"
    assert heartbeat["advised_timeout"] == "1"
    assert heartbeat["events_enqueued"] == "1"


def test_sigterm_disconnects_releases_the_lock_and_exits_0(
    app_env, sandbox_admin, redis_conn, services
):
    subscriber = start(services, app_env)
    subscriber.proc.send_signal(signal.SIGTERM)
    assert subscriber.proc.wait(timeout=15) == 0
    subscriber.wait_for_message("Subscriber stopped")
    assert redis_conn.get(keys.leader_key(DEFAULT_CHANNEL)) is None
    assert read_heartbeat(redis_conn, DEFAULT_CHANNEL)["state"] == "stopped"
    assert sandbox_admin.sf_counters()["cometd"]["disconnect"] == 1


# Crashes lose nothing and repeat nothing.


def test_kill_9_mid_stream_then_restart_loses_no_event_and_repeats_none(
    app_env, sandbox_admin, redis_conn, services
):
    subscriber = start(services, app_env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    published = [publish(sandbox_admin, f"80100000000{n:04d}AAA") for n in range(40)]
    wait_until(lambda: len(queued(redis_conn)) > 5, timeout=20)
    subscriber.kill()
    # The replay key never moves ahead of the queue: everything up to it has its job.
    stored = stored_replay(redis_conn)
    have = set(queued_uuids(redis_conn))
    upto = [e["event"]["EventUuid"] for e in published if e["event"]["replayId"] <= stored]
    assert set(upto) <= have
    published += [publish(sandbox_admin, f"80100000001{n:04d}AAA") for n in range(5)]  # while down
    again = start(services, app_env)
    wait_for_jobs(redis_conn, 46, again, timeout=TAKEOVER)
    uuids = queued_uuids(redis_conn)
    assert len(uuids) == len(set(uuids)) == 46
    assert {e["event"]["EventUuid"] for e in published} <= set(uuids)


def test_a_duplicate_delivery_makes_one_job(app_env, sandbox_admin, redis_conn, services):
    subscriber = start(services, app_env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    sandbox_admin.add_fault("cometd.connect", "duplicate")
    subscriber.wait_for_message("Duplicate Platform Event ignored")
    assert len(queued(redis_conn)) == 1
    assert read_heartbeat(redis_conn, DEFAULT_CHANNEL)["duplicates"] == "1"


# Each failure recovers by itself.


def test_403_unknown_client_rehandshakes_and_resubscribes_from_the_stored_id(
    app_env, sandbox_admin, redis_conn, services
):
    subscriber = start(services, app_env)
    first = publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    sandbox_admin.add_fault("cometd.connect", "unknown_client")
    assert wait_until(lambda: len(messages(subscriber, SUBSCRIBED)) == 2, timeout=30)
    assert messages(subscriber, SUBSCRIBED)[1]["replay_from"] == first["event"]["replayId"]
    assert "403::Unknown client" in messages(subscriber, RESTARTING)[0]["reason"]
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, subscriber)


def test_401_revoked_token_gets_a_new_token_and_starts_over(
    app_env, sandbox_admin, redis_conn, services
):
    subscriber = start(services, app_env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    logins = sandbox_admin.sf_counters()["logins"]
    sandbox_admin.revoke_tokens()
    assert wait_until(lambda: len(messages(subscriber, SUBSCRIBED)) == 2, timeout=30)
    assert "401::Authentication invalid" in messages(subscriber, RESTARTING)[0]["reason"]
    assert sandbox_admin.sf_counters()["logins"] == logins + 1
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, subscriber)


def test_a_lost_batch_is_delivered_again_after_resubscribing(
    app_env, sandbox_admin, redis_conn, services
):
    subscriber = start(services, app_env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    sandbox_admin.add_fault("cometd.connect", "lost_batch")
    assert wait_until(lambda: fault_fired(sandbox_admin, "cometd.connect", "lost_batch"), 10)
    lost = publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, subscriber)
    assert queued_uuids(redis_conn)[1] == lost["event"]["EventUuid"]
    assert sandbox_admin.sf_counters()["delivered"] >= 3  # the lost one went out twice


def test_an_invalid_replay_id_falls_back_to_all_retained_loudly_and_records_the_gap(
    app_env, sandbox_admin, redis_conn, services
):
    """The stored id was purged; an event published after it is still retained. Falling back
    to -1 would skip it for good; -2 replays it (and the dedupe keeps replays single)."""
    purged = publish(sandbox_admin)
    retained = publish(sandbox_admin)
    sandbox_admin.set_retention_floor(purged["event"]["replayId"])
    redis_conn.set(keys.replay_key(DEFAULT_CHANNEL), purged["event"]["replayId"])
    subscriber = start(services, app_env)
    warning = subscriber.wait_for(lambda line: "possible gap" in line.get("message", ""))
    assert warning["level"] == "ERROR"
    assert warning["requested_replay_id"] == purged["event"]["replayId"]
    assert warning["fallback"] == -2
    assert messages(subscriber, SUBSCRIBED)[0]["replay_from"] == -2
    [gap] = gaps(redis_conn, DEFAULT_CHANNEL)
    assert gap["requested"] == purged["event"]["replayId"] and gap["fallback"] == -2
    assert read_heartbeat(redis_conn, DEFAULT_CHANNEL)["replay_fallbacks"] == "1"
    wait_for_jobs(redis_conn, 1, subscriber)
    assert queued_uuids(redis_conn) == [retained["event"]["EventUuid"]]
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, subscriber)


def test_a_poison_event_does_not_stop_intake(app_env, sandbox_admin, redis_conn, services):
    """Issue 12: an EventUuid of '¹' passed `str.isalnum`, RQ refused the job id, the session
    ended and the same event came again, for ever. Now it is a job (keyed on its replay id) and
    every later approval becomes a job too, in one session."""
    subscriber = start(services, app_env)
    poisoned = sandbox_admin.publish({"OrderId__c": ORDER}, event_uuid="¹")
    approvals = [publish(sandbox_admin) for _ in range(3)]
    wait_for_jobs(redis_conn, 4, subscriber)
    assert queued_uuids(redis_conn) == ["¹"] + [a["event"]["EventUuid"] for a in approvals]
    ids = [i.decode() for i in redis_conn.lrange("rq:queue:provisioning", 0, -1)]
    assert ids[0] == f"evt-r{poisoned['event']['replayId']}"
    assert stored_replay(redis_conn) == approvals[-1]["event"]["replayId"]
    assert messages(subscriber, RESTARTING) == [] and subscriber.alive()


def test_a_stalled_long_poll_is_abandoned_and_the_session_restarted(
    app_env, sandbox_admin, redis_conn, services
):
    subscriber = start(services, app_env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    sandbox_admin.add_fault("cometd.connect", "hang", seconds=60)
    assert wait_until(lambda: messages(subscriber, RESTARTING), timeout=30)
    assert "timed out" in messages(subscriber, RESTARTING)[0]["reason"]
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, subscriber)


def test_server_errors_on_connect_back_off_and_recover(
    app_env, sandbox_admin, redis_conn, services
):
    subscriber = start(services, app_env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    sandbox_admin.add_fault("cometd.connect", "status", count=3, status=503)
    sandbox_admin.add_fault("cometd.handshake", "reset")
    assert wait_until(lambda: sandbox_admin.pending_faults() == [], timeout=60)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, subscriber)
    reasons = [line["reason"] for line in messages(subscriber, RESTARTING)]
    assert sum("HTTP 503" in r for r in reasons) == 3
    assert any("ConnectionFailed" in r for r in reasons)


def test_the_watchdog_restarts_a_session_that_only_gets_refusals(
    app_env, sandbox_admin, redis_conn, services
):
    """Connect replies keep saying "retry" but never succeed: no socket error ever happens."""
    subscriber = start(services, app_env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    sandbox_admin.add_fault(
        "cometd.connect", "error", count=8, error="500::busy", reconnect="retry"
    )
    assert wait_until(lambda: messages(subscriber, RESTARTING), timeout=30)
    assert messages(subscriber, RESTARTING)[0]["reason"].startswith("watchdog")
    assert wait_until(lambda: sandbox_admin.pending_faults() == [], timeout=30)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, subscriber)


# Operation.


def test_two_subscribers_one_active_and_a_takeover_after_kill_9(
    app_env, sandbox_admin, redis_conn, services
):
    leader = start(services, app_env)
    standby = services.start("subscriber", app_env)
    standby.wait_for_message("Standing by: another subscriber is active on the channel")
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, leader)
    assert messages(standby, ENQUEUED) == []
    leader.kill()
    standby.wait_for_message(SUBSCRIBED, timeout=TAKEOVER)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, standby)
    assert len(set(queued_uuids(redis_conn))) == 2
    assert sandbox_admin.sf_counters()["cometd"]["handshake"] == 2


def test_replay_all_backfills_once_then_resumes_from_the_stored_id(
    app_env, sandbox_admin, redis_conn, services
):
    first = start(services, app_env)
    events = [publish(sandbox_admin) for _ in range(3)]
    wait_for_jobs(redis_conn, 3, first)
    first.stop()
    backfill = start(services, app_env, SF_EVENTS_REPLAY="ALL")
    assert messages(backfill, SUBSCRIBED)[0]["replay_from"] == -2
    assert wait_until(
        lambda: len(messages(backfill, "Duplicate Platform Event ignored")) == 3, timeout=20
    )
    assert len(queued(redis_conn)) == 3  # the backfill made no second job
    sandbox_admin.add_fault("cometd.connect", "unknown_client")
    assert wait_until(lambda: len(messages(backfill, SUBSCRIBED)) == 2, timeout=30)
    assert messages(backfill, SUBSCRIBED)[1]["replay_from"] == events[-1]["event"]["replayId"]


def test_disabled_subscriber_idles_without_salesforce_credentials(
    sandbox_admin, redis_url, redis_conn, services
):
    env = {"REDIS_URL": redis_url, "SF_EVENTS_ENABLED": "false"}
    subscriber = services.start("subscriber", env)
    subscriber.wait_for(lambda line: "SF_EVENTS_ENABLED=false" in line.get("message", ""))
    assert wait_until(
        lambda: read_heartbeat(redis_conn, DEFAULT_CHANNEL).get("state") == "disabled", 10
    )
    assert subscriber.alive()
    assert subscriber.stop() == 0
    assert sandbox_admin.sf_counters()["cometd"]["handshake"] == 0


def test_empty_environment_names_every_missing_variable_and_exits_2():
    result = subprocess.run(
        [sys.executable, "-m", "subscriber"],
        env={},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    for name in (
        "SF_LOGIN_URL",
        "SF_CLIENT_ID",
        "SF_USERNAME",
        "SF_PRIVATE_KEY_PATH",
        "SF_EVENTS_ENABLED",
    ):
        assert name in result.stderr


def test_help():
    result = subprocess.run(
        [sys.executable, "-m", "subscriber", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "SF_PROVISION_EVENT_CHANNEL" in result.stdout
