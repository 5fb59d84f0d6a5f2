"""The subscriber as a real process against the sandbox: recovery, leadership, shutdown.

Assertions are on what lands in Redis (the RQ queue, the replay key, the heartbeat), never on
fulfilment: no worker runs here. Each test runs for both transports (CometD and the Pub/Sub API)
where the situation exists for both; `Transport` holds what differs between them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from sandbox.fixtures import standard_document
from sandbox.http_server import wait_until
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


@dataclass(frozen=True)
class Transport:
    name: str

    def start(self, preset: int) -> int | str:
        """How the SUBSCRIBED line names a start from the tip (-1) or from the earliest (-2)."""
        if self.name == "cometd":
            return preset
        return {-1: "LATEST", -2: "EARLIEST"}[preset]

    def resumed_from(self, replay_id: int) -> int | str:
        return replay_id if self.name == "cometd" else replay_id.to_bytes(8, "big").hex()

    def stored(self, conn: redis.Redis) -> int | None:
        if self.name == "cometd":
            raw = conn.get(keys.replay_key(DEFAULT_CHANNEL))
            return int(raw) if raw is not None else None
        raw = conn.get(keys.pubsub_replay_key(DEFAULT_CHANNEL))
        return int(raw, 16) if raw is not None else None

    def store(self, conn: redis.Redis, replay_id: int) -> None:
        if self.name == "cometd":
            conn.set(keys.replay_key(DEFAULT_CHANNEL), replay_id)
        else:
            conn.set(keys.pubsub_replay_key(DEFAULT_CHANNEL), self.resumed_from(replay_id))

    def fault(self, admin, situation: str, **params: Any) -> tuple[str, str]:
        """Inject the transport's form of a situation; (target, kind) for fault_fired."""
        target, kind = {
            "cometd": {
                "drop": ("cometd.connect", "unknown_client"),
                "duplicate": ("cometd.connect", "duplicate"),
                "stall": ("cometd.connect", "hang"),
            },
            "pubsub": {
                "drop": ("pubsub.fetch", "close"),
                "duplicate": ("pubsub.fetch", "duplicate"),
                "stall": ("pubsub.fetch", "silence"),
            },
        }[self.name][situation]
        admin.add_fault(target, kind, **params)
        return target, kind

    def sessions(self, admin) -> int:
        counters = admin.sf_counters()
        return (
            counters["cometd"]["handshake"]
            if self.name == "cometd"
            else counters["pubsub"]["subscribe"]
        )


@pytest.fixture(params=["cometd", "pubsub"])
def transport(request) -> Transport:
    return Transport(request.param)


@pytest.fixture
def env(app_env: dict[str, str], transport: Transport) -> dict[str, str]:
    # A short watchdog window for pubsub, as the sandbox's 1 s long-polls give CometD one.
    return {**app_env, "SF_EVENTS_TRANSPORT": transport.name, "SF_PUBSUB_STALL_TIMEOUT": "3"}


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


def test_an_approved_order_becomes_one_queued_job(
    env, transport, sandbox_admin, redis_conn, services
):
    refs = sandbox_admin.load(standard_document(orders=1))["refs"]
    subscriber = start(services, env)
    [line] = messages(subscriber, SUBSCRIBED)
    assert line["channel"] == DEFAULT_CHANNEL and line["replay_from"] == transport.start(-1)
    event = sandbox_admin.approve("o1")
    wait_for_jobs(redis_conn, 1, subscriber)
    [job] = queued(redis_conn)
    assert job["order_id"] == refs["o1"]
    assert job["event_uuid"] == event["event"]["EventUuid"]
    assert job["replay_id"] == event["event"]["replayId"]
    assert job["published_at"] == event["payload"]["CreatedDate"]
    assert transport.stored(redis_conn) == event["event"]["replayId"]
    logged = subscriber.wait_for_message(ENQUEUED)
    assert logged["order_id"] == refs["o1"]
    assert logged["job_id"] == f"evt-{job['event_uuid']}"
    heartbeat = read_heartbeat(redis_conn, DEFAULT_CHANNEL)
    assert heartbeat["state"] == "connected"
    assert heartbeat["transport"] == transport.name
    assert heartbeat["advised_timeout"] == ("1" if transport.name == "cometd" else "1.5")
    assert heartbeat["events_enqueued"] == "1"


def test_sigterm_disconnects_releases_the_lock_and_exits_0(
    env, transport, sandbox_admin, redis_conn, services
):
    subscriber = start(services, env)
    subscriber.proc.send_signal(signal.SIGTERM)
    assert subscriber.proc.wait(timeout=15) == 0
    subscriber.wait_for_message("Subscriber stopped")
    assert redis_conn.get(keys.leader_key(DEFAULT_CHANNEL)) is None
    assert read_heartbeat(redis_conn, DEFAULT_CHANNEL)["state"] == "stopped"
    if transport.name == "cometd":
        assert sandbox_admin.sf_counters()["cometd"]["disconnect"] == 1


# Crashes lose nothing and repeat nothing.


def test_kill_9_mid_stream_then_restart_loses_no_event_and_repeats_none(
    env, transport, sandbox_admin, redis_conn, services
):
    subscriber = start(services, env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    published = [publish(sandbox_admin, f"80100000000{n:04d}AAA") for n in range(40)]
    wait_until(lambda: len(queued(redis_conn)) > 5, timeout=20)
    subscriber.kill()
    # The replay key never moves ahead of the queue: everything up to it has its job.
    stored = transport.stored(redis_conn)
    have = set(queued_uuids(redis_conn))
    upto = [e["event"]["EventUuid"] for e in published if e["event"]["replayId"] <= stored]
    assert set(upto) <= have
    published += [publish(sandbox_admin, f"80100000001{n:04d}AAA") for n in range(5)]  # while down
    again = start(services, env)
    wait_for_jobs(redis_conn, 46, again, timeout=TAKEOVER)
    uuids = queued_uuids(redis_conn)
    assert len(uuids) == len(set(uuids)) == 46
    assert {e["event"]["EventUuid"] for e in published} <= set(uuids)


def test_a_duplicate_delivery_makes_one_job(env, transport, sandbox_admin, redis_conn, services):
    subscriber = start(services, env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    transport.fault(sandbox_admin, "duplicate")
    subscriber.wait_for_message("Duplicate Platform Event ignored")
    assert len(queued(redis_conn)) == 1
    assert read_heartbeat(redis_conn, DEFAULT_CHANNEL)["duplicates"] == "1"


# Each failure recovers by itself.


def test_a_dropped_session_resubscribes_from_the_stored_id(
    env, transport, sandbox_admin, redis_conn, services
):
    """CometD: 403::Unknown client, then a new handshake. Pub/Sub: the stream closed mid-flight."""
    subscriber = start(services, env)
    first = publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    transport.fault(sandbox_admin, "drop")
    assert wait_until(lambda: len(messages(subscriber, SUBSCRIBED)) == 2, timeout=30)
    resumed = messages(subscriber, SUBSCRIBED)[1]["replay_from"]
    assert resumed == transport.resumed_from(first["event"]["replayId"])
    reason = messages(subscriber, RESTARTING)[0]["reason"]
    assert ("403::Unknown client" if transport.name == "cometd" else "RST_STREAM") in reason
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, subscriber)


def test_a_revoked_token_gets_a_new_token_and_starts_over(
    env, transport, sandbox_admin, redis_conn, services
):
    subscriber = start(services, env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    logins = sandbox_admin.sf_counters()["logins"]
    sandbox_admin.revoke_tokens()
    assert wait_until(lambda: len(messages(subscriber, SUBSCRIBED)) == 2, timeout=30)
    refusal = "401::Authentication invalid" if transport.name == "cometd" else "UNAUTHENTICATED"
    assert refusal in messages(subscriber, RESTARTING)[0]["reason"]
    assert sandbox_admin.sf_counters()["logins"] == logins + 1
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, subscriber)


def test_a_lost_batch_is_delivered_again_after_resubscribing(
    app_env, sandbox_admin, redis_conn, services
):
    """CometD only: a Pub/Sub stream has no session to lose a batch from."""
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
    env, transport, sandbox_admin, redis_conn, services
):
    """The stored id was purged; an event published after it is still retained. Falling back
    to -1 would skip it for good; -2 replays it (and the dedupe keeps replays single)."""
    purged = publish(sandbox_admin)
    retained = publish(sandbox_admin)
    sandbox_admin.set_retention_floor(purged["event"]["replayId"])
    transport.store(redis_conn, purged["event"]["replayId"])
    subscriber = start(services, env)
    warning = subscriber.wait_for(lambda line: "possible gap" in line.get("message", ""))
    fallback = transport.start(-2)  # both transports: every retained event (-2, EARLIEST)
    requested = transport.resumed_from(purged["event"]["replayId"])
    assert warning["level"] == "ERROR"
    assert warning["requested_replay_id"] == requested
    assert warning["fallback"] == fallback
    assert messages(subscriber, SUBSCRIBED)[-1]["replay_from"] == fallback
    [gap] = gaps(redis_conn, DEFAULT_CHANNEL)
    assert gap["requested"] == requested and gap["fallback"] == fallback
    assert read_heartbeat(redis_conn, DEFAULT_CHANNEL)["replay_fallbacks"] == "1"
    wait_for_jobs(redis_conn, 1, subscriber)
    assert queued_uuids(redis_conn) == [retained["event"]["EventUuid"]]
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, subscriber)


def test_a_poison_event_does_not_stop_intake(env, transport, sandbox_admin, redis_conn, services):
    """Issue 12: an EventUuid of '¹' passed `str.isalnum`, RQ refused the job id, the session
    ended and the same event came again, for ever. Now it is a job (keyed on its replay id) and
    every later approval becomes a job too, in one session."""
    subscriber = start(services, env)
    poisoned = sandbox_admin.publish({"OrderId__c": ORDER}, event_uuid="¹")
    approvals = [publish(sandbox_admin) for _ in range(3)]
    wait_for_jobs(redis_conn, 4, subscriber)
    assert queued_uuids(redis_conn) == ["¹"] + [a["event"]["EventUuid"] for a in approvals]
    ids = [i.decode() for i in redis_conn.lrange("rq:queue:provisioning", 0, -1)]
    assert ids[0] == f"evt-r{poisoned['event']['replayId']}"
    assert transport.stored(redis_conn) == approvals[-1]["event"]["replayId"]
    assert messages(subscriber, RESTARTING) == [] and subscriber.alive()


def test_a_stalled_stream_is_abandoned_and_the_session_restarted(
    env, transport, sandbox_admin, redis_conn, services
):
    """CometD: a long-poll that never answers. Pub/Sub: no event and no keepalive at all."""
    subscriber = start(services, env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    transport.fault(sandbox_admin, "stall", seconds=60)
    assert wait_until(lambda: messages(subscriber, RESTARTING), timeout=30)
    reason = messages(subscriber, RESTARTING)[0]["reason"]
    assert ("timed out" if transport.name == "cometd" else "watchdog") in reason
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, subscriber)


def test_server_errors_back_off_and_recover(env, transport, sandbox_admin, redis_conn, services):
    subscriber = start(services, env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)
    if transport.name == "cometd":
        sandbox_admin.add_fault("cometd.connect", "status", count=3, status=503)
        sandbox_admin.add_fault("cometd.handshake", "reset")
    else:
        sandbox_admin.add_fault("pubsub.fetch", "unavailable")
        sandbox_admin.add_fault("pubsub.subscribe", "unavailable", count=2)
    assert wait_until(lambda: sandbox_admin.pending_faults() == [], timeout=60)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, subscriber)
    reasons = [line["reason"] for line in messages(subscriber, RESTARTING)]
    if transport.name == "cometd":
        assert sum("HTTP 503" in r for r in reasons) == 3
        assert any("ConnectionFailed" in r for r in reasons)
    else:
        assert sum("INTERNAL: The service is unavailable" in r for r in reasons) == 3
        assert all(line["retry_in"] > 0 for line in messages(subscriber, RESTARTING))


def test_the_watchdog_restarts_a_session_that_only_gets_refusals(
    app_env, sandbox_admin, redis_conn, services
):
    """CometD only: connect replies keep saying "retry" but never succeed (Pub/Sub has no
    such reply; its watchdog is the stalled-stream test)."""
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
    env, transport, sandbox_admin, redis_conn, services
):
    leader = start(services, env)
    standby = services.start("subscriber", env)
    standby.wait_for_message("Standing by: another subscriber is active on the channel")
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, leader)
    assert messages(standby, ENQUEUED) == []
    leader.kill()
    standby.wait_for_message(SUBSCRIBED, timeout=TAKEOVER)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 2, standby)
    assert len(set(queued_uuids(redis_conn))) == 2
    assert transport.sessions(sandbox_admin) == 2


def test_replay_all_backfills_once_then_resumes_from_the_stored_id(
    env, transport, sandbox_admin, redis_conn, services
):
    first = start(services, env)
    events = [publish(sandbox_admin) for _ in range(3)]
    wait_for_jobs(redis_conn, 3, first)
    first.stop()
    backfill = start(services, env, SF_EVENTS_REPLAY="ALL")
    assert messages(backfill, SUBSCRIBED)[0]["replay_from"] == transport.start(-2)
    assert wait_until(
        lambda: len(messages(backfill, "Duplicate Platform Event ignored")) == 3, timeout=20
    )
    assert len(queued(redis_conn)) == 3  # the backfill made no second job
    transport.fault(sandbox_admin, "drop")
    assert wait_until(lambda: len(messages(backfill, SUBSCRIBED)) == 2, timeout=30)
    resumed = messages(backfill, SUBSCRIBED)[1]["replay_from"]
    assert resumed == transport.resumed_from(events[-1]["event"]["replayId"])


def test_switching_transports_never_resumes_from_the_other_ones_id(
    app_env, sandbox_admin, redis_conn, services
):
    cometd = start(services, app_env)
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, cometd)
    cometd.stop()
    assert redis_conn.get(keys.pubsub_replay_key(DEFAULT_CHANNEL)) is None
    pubsub = start(services, {**app_env, "SF_EVENTS_TRANSPORT": "pubsub"})
    assert messages(pubsub, SUBSCRIBED)[0]["replay_from"] == "LATEST"
    assert redis_conn.get(keys.replay_key(DEFAULT_CHANNEL)) is not None  # left as it was


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
