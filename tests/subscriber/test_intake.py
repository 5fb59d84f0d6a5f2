"""The intake against real Redis: one job per event, dedupe, fencing, and atomicity."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from rq.job import Job, validate_job_id
from rq.serializers import JSONSerializer

from shared import keys
from shared.queueing import FAILURE_TTL, JOB_PATH, RESULT_TTL, job_id_for, provisioning_queue
from subscriber.heartbeat import dead_letters
from subscriber.heartbeat import read as read_heartbeat
from subscriber.intake import Intake, NotLeader
from subscriber.leader import Leadership

CHANNEL = "/event/OrderProvisionRequested__e"
QUEUE = "provisioning"
ORDER = "8015g00000ABCDEAA1"


def message(replay_id: int, order_id: Any = ORDER, event_uuid: str | None = None) -> dict:
    return {
        "schema": "dffQ2QLzDNHqwB8_sHMxdA",
        "payload": {
            "OrderId__c": order_id,
            "CreatedDate": "2026-04-09T18:31:40.517Z",
            "CreatedById": "005D0000001cSZs",
        },
        "event": {"replayId": replay_id, "EventUuid": event_uuid or str(uuid.uuid4())},
    }


@pytest.fixture
def queue(redis_conn):
    return provisioning_queue(redis_conn, QUEUE, job_timeout=321)


@pytest.fixture
def intake(redis_conn, queue) -> Intake:
    return Intake(redis_conn, queue, CHANNEL, job_timeout=321)


def stored_replay(redis_conn) -> bytes | None:
    return redis_conn.get(keys.replay_key(CHANNEL))


def test_an_event_becomes_one_json_job_and_advances_the_replay_id(redis_conn, queue, intake):
    event = message(2112)
    accepted = intake.accept(event)
    uuid_ = event["event"]["EventUuid"]
    assert accepted.job_id == f"evt-{uuid_}" and not accepted.duplicate
    assert queue.job_ids == [accepted.job_id]
    job = Job.fetch(accepted.job_id, connection=redis_conn, serializer=JSONSerializer)
    assert job.func_name == JOB_PATH
    assert job.args == [
        {
            "order_id": ORDER,
            "event_uuid": uuid_,
            "replay_id": 2112,
            "published_at": "2026-04-09T18:31:40.517Z",
            "channel": CHANNEL,
        }
    ]
    assert job.meta == {
        "order_id": ORDER,
        "event_uuid": uuid_,
        "replay_id": 2112,
        "event_time": "2026-04-09T18:31:40.517Z",
        "source": "event",
    }
    assert ORDER in job.description and uuid_ in job.description
    assert job.timeout == 321
    assert job.result_ttl == RESULT_TTL and job.failure_ttl == FAILURE_TTL
    assert job.retries_left is None  # no retry
    assert job.get_status() == "queued"
    assert stored_replay(redis_conn) == b"2112"
    assert redis_conn.get(keys.seen_key(uuid_)) == accepted.job_id.encode()
    assert redis_conn.ttl(keys.seen_key(uuid_)) > 72 * 3600
    heartbeat = read_heartbeat(redis_conn, CHANNEL)
    assert heartbeat["events_enqueued"] == "1"
    assert heartbeat["last_replay_id"] == "2112"
    assert float(heartbeat["last_event_at"]) > 0


def test_the_recorded_writes_are_exactly_rqs_own(redis_conn, queue, intake):
    """The job hash our script writes matches what Queue.enqueue_call writes by itself."""
    event = message(7)
    ours = intake.accept(event).job_id
    theirs = queue.enqueue_call(
        JOB_PATH,
        args=(Job.fetch(ours, connection=redis_conn, serializer=JSONSerializer).args[0],),
        job_id="evt-reference",
        timeout=321,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        description=Job.fetch(ours, connection=redis_conn).description,
        meta=Job.fetch(ours, connection=redis_conn, serializer=JSONSerializer).meta,
    )
    ours_hash = redis_conn.hgetall(f"rq:job:{ours}")
    theirs_hash = redis_conn.hgetall(f"rq:job:{theirs.id}")
    assert set(ours_hash) == set(theirs_hash)
    differ = {k for k in ours_hash if ours_hash[k] != theirs_hash[k]}
    assert differ <= {b"created_at", b"enqueued_at", b"last_heartbeat"}
    assert redis_conn.ttl(f"rq:job:{ours}") == redis_conn.ttl(f"rq:job:{theirs.id}")
    assert queue.job_ids == [ours, theirs.id]
    assert redis_conn.sismember("rq:queues", f"rq:queue:{QUEUE}")


def test_a_redelivered_event_is_one_job(redis_conn, queue, intake):
    event = message(10)
    first = intake.accept(event)
    again = intake.accept(event)
    assert again.duplicate and again.job_id == first.job_id
    assert queue.job_ids == [first.job_id]
    heartbeat = read_heartbeat(redis_conn, CHANNEL)
    assert heartbeat["events_enqueued"] == "1"
    assert heartbeat["duplicates"] == "1"


def test_dedupe_survives_the_job_leaving_redis(redis_conn, queue, intake):
    """Not RQ's job id: a finished job that expired or was deleted does not reopen the door."""
    event = message(11)
    job_id = intake.accept(event).job_id
    Job.fetch(job_id, connection=redis_conn).delete()
    assert intake.accept(event).duplicate
    assert queue.count == 0


def test_a_backfill_replays_old_events_without_new_jobs(redis_conn, queue, intake):
    events = [message(i) for i in (5, 9, 20)]
    for event in events:
        intake.accept(event)
    for event in events:  # -2 delivers them all again
        assert intake.accept(event).duplicate
    assert queue.count == 3
    assert stored_replay(redis_conn) == b"20"


def test_concurrent_deliveries_of_one_event_make_one_job(redis_conn, queue):
    event = message(12)
    intakes = [Intake(redis_conn, queue, CHANNEL, job_timeout=60) for _ in range(8)]
    barrier = threading.Barrier(len(intakes))
    results = []

    def deliver(intake: Intake) -> None:
        barrier.wait()
        results.append(intake.accept(event))

    threads = [threading.Thread(target=deliver, args=(i,)) for i in intakes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.duplicate for r in results) == [False] + [True] * 7
    assert queue.count == 1


def test_event_without_a_usable_order_id_is_enqueued_not_dropped(redis_conn, queue, intake):
    for order_id in (None, "", 42, "not-an-id"):
        intake.accept(message(100, order_id=order_id))
    jobs = [Job.fetch(i, connection=redis_conn, serializer=JSONSerializer) for i in queue.job_ids]
    assert [j.args[0]["order_id"] for j in jobs] == [None, "", 42, "not-an-id"]


def test_event_without_uuid_is_deduplicated_on_its_replay_id(redis_conn, queue, intake):
    event = message(77)
    del event["event"]["EventUuid"]
    first = intake.accept(event)
    assert first.job_id == "evt-r77"
    assert intake.accept(event).duplicate
    assert queue.count == 1


def test_event_without_replay_id_does_not_move_the_replay_id(redis_conn, queue, intake):
    intake.accept(message(50))
    odd = message(0)
    del odd["event"]["replayId"]
    intake.accept(odd)
    assert queue.count == 2
    assert stored_replay(redis_conn) == b"50"


def test_a_fenced_intake_refuses_once_the_lock_is_someone_elses(redis_conn, queue):
    leader = Leadership(redis_conn, CHANNEL, "host-a:1")
    assert leader.acquire()
    intake = Intake(redis_conn, queue, CHANNEL, job_timeout=60, fence=(leader.key, leader.value))
    intake.accept(message(1))
    redis_conn.set(leader.key, "host-b:2:beef")  # the lease expired and another took it
    with pytest.raises(NotLeader):
        intake.accept(message(2))
    redis_conn.delete(leader.key)
    with pytest.raises(NotLeader):
        intake.accept(message(3))
    assert queue.count == 1
    assert stored_replay(redis_conn) == b"1"


def test_the_replay_id_never_moves_ahead_of_the_queue(redis_conn, queue, intake):
    """A write that fails inside the step leaves the replay id where it was."""
    intake.accept(message(1))
    redis_conn.delete(queue.key)
    redis_conn.set(queue.key, "not a list")  # the queue push will fail
    event = message(2)
    with pytest.raises(redis.ResponseError):
        intake.accept(event)
    assert stored_replay(redis_conn) == b"1"
    assert redis_conn.get(keys.seen_key(event["event"]["EventUuid"])) is None
    redis_conn.delete(queue.key)
    accepted = intake.accept(event)  # the redelivery goes through, once
    assert not accepted.duplicate
    assert queue.job_ids == [accepted.job_id]
    assert stored_replay(redis_conn) == b"2"


def test_a_broken_heartbeat_hash_does_not_block_events(redis_conn, queue, intake):
    redis_conn.set(keys.heartbeat_key(CHANNEL), "not a hash")
    intake.accept(message(3))
    assert queue.count == 1
    assert stored_replay(redis_conn) == b"3"


def test_the_enqueue_log_line_names_the_event(intake, caplog):
    event = message(31)
    with caplog.at_level("INFO", logger="subscriber.intake"):
        accepted = intake.accept(event)
    [record] = [
        r for r in caplog.records if r.message == "Platform Event enqueued for provisioning"
    ]
    assert record.order_id == ORDER
    assert record.event_uuid == event["event"]["EventUuid"]
    assert record.replay_id == 31
    assert record.job_id == accepted.job_id


# Job ids and dead letters: no event can stop intake (issue 12).


@pytest.mark.parametrize(
    ("event_uuid", "replay_id", "expected"),
    [
        ("2ec0e371-1395-457f-9275-be1b527a72f7", 5, "evt-2ec0e371-1395-457f-9275-be1b527a72f7"),
        ("\u00b9", 5, "evt-r5"),  # superscript one: str.isalnum says yes, RQ says no
        ("\u0663", 5, "evt-r5"),  # Arabic-Indic three
        ("caf\u00e9", 5, "evt-r5"),
        ("a b", 5, "evt-r5"),
        ("a:b", 5, "evt-r5"),
        ("x" * 65, 5, "evt-r5"),
    ],
)
def test_job_ids_keep_to_the_ascii_rq_alphabet(event_uuid, replay_id, expected):
    assert job_id_for(event_uuid, replay_id) == expected


@settings(max_examples=200, deadline=None)
@given(event_uuid=st.one_of(st.none(), st.text(max_size=80)), replay_id=st.integers() | st.none())
def test_any_job_id_is_one_rq_accepts(event_uuid, replay_id):
    validate_job_id(job_id_for(event_uuid, replay_id))


def test_the_superscript_uuid_that_stopped_intake_becomes_a_job(redis_conn, queue, intake):
    data = message(7, event_uuid="\u00b9")
    accepted = intake.accept(data)
    assert accepted.job_id == "evt-r7" and not accepted.dead_letter
    assert intake.accept(data).duplicate
    assert stored_replay(redis_conn) == b"7"


def poison(replay_id: int, event_uuid: str) -> dict:
    """An event RQ cannot serialise: a CreatedDate nested deeper than any JSON encoder goes."""
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    data = message(replay_id, event_uuid=event_uuid)
    data["payload"]["CreatedDate"] = nested
    return data


def test_an_event_that_cannot_become_a_job_is_dead_lettered_and_the_stream_moves_on(
    redis_conn, queue, intake
):
    accepted = intake.accept(poison(11, "poison-1"))
    assert accepted.dead_letter and accepted.job_id == ""
    assert queue.job_ids == [] and stored_replay(redis_conn) == b"11"
    [record] = dead_letters(redis_conn, CHANNEL)
    assert record["replay_id"] == 11 and record["event_uuid"] == "poison-1"
    assert record["order_id"] == ORDER and "RecursionError" in record["reason"]
    assert record["payload"] == "<not JSON: RecursionError>"
    assert read_heartbeat(redis_conn, CHANNEL)["dead_letters"] == "1"
    assert not redis_conn.exists(keys.seen_key("poison-1"))
    later = intake.accept(message(12))
    assert not later.dead_letter and queue.job_ids == [later.job_id]
    assert stored_replay(redis_conn) == b"12"


def test_the_dead_letter_list_is_bounded(redis_conn, queue, intake, monkeypatch):
    monkeypatch.setattr(keys, "DEAD_LETTERS_KEEP", 3)
    for n in range(5):
        assert intake.accept(poison(20 + n, f"p{n}")).dead_letter
    assert [r["replay_id"] for r in dead_letters(redis_conn, CHANNEL)] == [24, 23, 22]
    assert read_heartbeat(redis_conn, CHANNEL)["dead_letters"] == "5"


def test_a_dead_letter_is_fenced_like_a_job(redis_conn, queue):
    leader = Leadership(redis_conn, CHANNEL, "me")
    assert leader.acquire()
    fenced = Intake(redis_conn, queue, CHANNEL, job_timeout=321, fence=(leader.key, leader.value))
    redis_conn.set(leader.key, "someone-else")
    with pytest.raises(NotLeader):
        fenced.accept(poison(30, "p"))
    assert dead_letters(redis_conn, CHANNEL) == [] and stored_replay(redis_conn) is None


def test_a_redis_failure_is_not_a_dead_letter(redis_conn, queue):
    """The store's fault, not the event's: the event comes again in the next session."""
    gone = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    broken = Intake(gone, provisioning_queue(gone, QUEUE, job_timeout=1), CHANNEL, job_timeout=1)
    with pytest.raises(redis.ConnectionError):
        broken.accept(message(40))
