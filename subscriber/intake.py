"""One platform event in: deduplicate on EventUuid, enqueue its RQ job, advance the replay id.

All of it is one atomic step in Redis, one round trip: a Lua script checks the leader lock
(the fence) and the dedupe key `sf:pe:seen:<EventUuid>`, then runs the exact writes that RQ's
`enqueue_call(pipeline=...)` recorded into a never-executed pipeline (job hash, queue push),
sets the dedupe key, and only then the replay id. A crash at any instant leaves all or nothing:
the replay id never moves ahead of the queue, and a redelivered event never becomes a second job.
RQ's own job-id reuse is not a dedupe (it overwrites the hash and queues the id again), and
`unique=True` cannot share a transaction with our keys (it ignores the pipeline).

No event can stop intake: one that cannot become a job (whatever it holds) is recorded in the
dead-letter list `sf:pe:dead:<channel>` (payload, reason, replay id; bounded), counted in the
heartbeat's `dead_letters`, and the replay id moves past it in the same atomic step.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from shared import keys, queueing
from shared.jobpayload import JobPayload
from shared.logs import bind, scrub

log = logging.getLogger(__name__)

# Runs the writes RQ's enqueue_call(pipeline=...) recorded, plus ours, only if the leader lock
# is still ours and the event was not seen: the checks and the writes in one atomic step.
# KEYS: dedupe key, leader key. ARGV: lock value ('' = no fence), job id, then four command
# groups, each as: count, then per command argc and its args. The groups run in order: the job
# and dedupe key (new events only), the replay id (always, and after the job, so a failing write
# can never leave the replay id ahead of the queue), then the heartbeat: last event, and the
# counter for a new event or for a duplicate, with pcall so that a cosmetic failure cannot block
# the stream.
ACCEPT_SCRIPT = """
if ARGV[1] ~= '' and redis.call('get', KEYS[2]) ~= ARGV[1] then return {-1, ''} end
local seen = redis.call('get', KEYS[1])
local pos = 3
local function run(execute, call)
  local count = tonumber(ARGV[pos])
  pos = pos + 1
  for _ = 1, count do
    local argc = tonumber(ARGV[pos])
    if execute then call(unpack(ARGV, pos + 1, pos + argc)) end
    pos = pos + argc + 1
  end
end
run(not seen, redis.call)
run(true, redis.call)
run(true, redis.pcall)
run(not seen, redis.pcall)
run(seen ~= false, redis.pcall)
if seen then return {0, seen} end
return {1, ARGV[2]}
"""

# Records an event that cannot become a job and moves the replay id past it, fenced like the
# accept script. KEYS: leader key ('' = no fence), dead-letter list, replay key, heartbeat.
# ARGV: lock value, record (JSON), keep, replay id ('' = none), now.
DEAD_LETTER_SCRIPT = """
if ARGV[1] ~= '' and redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('lpush', KEYS[2], ARGV[2])
redis.call('ltrim', KEYS[2], 0, tonumber(ARGV[3]) - 1)
if ARGV[4] ~= '' then
  redis.call('set', KEYS[3], ARGV[4])
  redis.pcall('hset', KEYS[4], 'last_replay_id', ARGV[4], 'last_event_at', ARGV[5])
end
redis.pcall('hincrby', KEYS[4], 'dead_letters', 1)
return 1
"""
DEAD_PAYLOAD_CHARS = 4000


class NotLeader(Exception):
    """The leader lock is no longer ours: another subscriber owns the channel now."""


@dataclass(frozen=True)
class Accepted:
    job_id: str
    duplicate: bool
    event: dict[str, Any]
    dead_letter: bool = False


def job_event(channel: str, data: Any) -> dict[str, Any]:
    """The job's argument (docs/design.md "The job") from a CometD event's `data`."""
    return JobPayload.from_event(channel, data).to_payload()


def job_meta(event: dict[str, Any]) -> dict[str, Any]:
    """What rq-dashboard shows next to the job, and what ops search for."""
    return JobPayload.from_payload(event).meta()


def job_description(event: dict[str, Any]) -> str:
    return JobPayload.from_payload(event).description()


def dead_letter_record(
    channel: str, data: Any, payload: JobPayload, reason: str, now: float
) -> dict[str, Any]:
    """What ops need to replay an event by hand: its data (bounded), why, and where it was."""
    return {
        "at": f"{now:.3f}",
        "channel": channel,
        "replay_id": payload.replay_id,
        "event_uuid": payload.event_uuid,
        "order_id": payload.order_id if isinstance(payload.order_id, str) else None,
        "reason": scrub(reason)[:300],
        "payload": scrub(_dump(data))[:DEAD_PAYLOAD_CHARS],
    }


def _dump(data: Any) -> str:
    try:
        return json.dumps(data, default=repr)
    except (ValueError, RecursionError) as exc:  # the record must be written whatever the data
        return f"<not JSON: {type(exc).__name__}>"


def _flatten(commands: list[tuple[Any, ...]]) -> list[Any]:
    """A group of commands as script arguments: count, then per command argc and its args."""
    flat: list[Any] = [len(commands)]
    for command in commands:
        flat.append(len(command))
        flat.extend(command)
    return flat


class Intake:
    def __init__(
        self,
        connection: redis.Redis,
        queue: Queue,
        channel: str,
        *,
        job_timeout: int,
        fence: tuple[str, str] | None = None,  # (leader key, our lock value)
        clock: Callable[[], float] = time.time,
        replay_key: str | None = None,  # the Pub/Sub transport keeps its position apart
    ) -> None:
        self.redis = connection
        self.queue = queue
        self.channel = channel
        self.job_timeout = job_timeout
        self.fence = (fence[0], fence[1].encode()) if fence else None
        self.clock = clock
        self.replay_key = replay_key or keys.replay_key(channel)
        self.heartbeat_key = keys.heartbeat_key(channel)
        self.dead_key = keys.dead_letters_key(channel)
        self._accept_script = connection.register_script(ACCEPT_SCRIPT)
        self._dead_script = connection.register_script(DEAD_LETTER_SCRIPT)

    def accept(self, data: Any, position: str | None = None) -> Accepted:
        """Enqueue the event's job unless it was seen before; advance the replay id either way.

        An event that cannot become a job is dead-lettered and the stream moves on: no event
        can stop intake. A Redis error or a lost lock raise (the event comes again).
        `position`: what to store as the replay position instead of the event's replay id (the
        Pub/Sub transport's opaque id, as hex).
        """
        payload = JobPayload.from_event(self.channel, data)
        event = payload.to_payload()
        with bind(
            order_id=event["order_id"] if isinstance(event["order_id"], str) else None,
            event_uuid=event["event_uuid"],
            replay_id=event["replay_id"],
            channel=self.channel,
        ):
            try:
                job_id = payload.job_id()
                writes = self._writes(payload, job_id, position)
            except Exception as exc:  # whatever this event holds, the next one must get through
                return self._dead_letter(data, payload, f"{type(exc).__name__}: {exc}", position)
            accepted = self._commit(payload, job_id, writes)
            fields = {
                "order_id": event["order_id"],
                "event_uuid": event["event_uuid"],
                "replay_id": event["replay_id"],
                "job_id": accepted.job_id,
            }
            if accepted.duplicate:
                log.info("Duplicate Platform Event ignored", extra=fields)
            else:
                log.info("Platform Event enqueued for provisioning", extra=fields)
        return accepted

    def _writes(self, payload: JobPayload, job_id: str, position: str | None) -> list[Any]:
        """The accept script's command groups, flat; building them is where an event that
        cannot become a job fails (RQ refuses the id or cannot serialise the arguments)."""
        groups = (
            self._recorded_enqueue(payload, job_id, self._seen_key(payload, job_id)),
            *self._replay_writes(payload.to_payload(), position),
            [("HINCRBY", self.heartbeat_key, "events_enqueued", 1)],
            [("HINCRBY", self.heartbeat_key, "duplicates", 1)],
        )
        return [arg for group in groups for arg in _flatten(group)]

    def _seen_key(self, payload: JobPayload, job_id: str) -> str:
        return keys.seen_key(payload.dedupe_id(job_id))

    def _commit(self, payload: JobPayload, job_id: str, writes: list[Any]) -> Accepted:
        """One round trip. A Redis refusal here is the store's fault, not the event's: it is
        raised, the session restarts and the event comes again (never dead-lettered)."""
        event = payload.to_payload()
        seen_key = self._seen_key(payload, job_id)
        fence_key, fence_value = self.fence or (seen_key, b"")
        status, found = self._accept_script(
            keys=[seen_key, fence_key], args=[fence_value, job_id, *writes]
        )
        if status == -1:
            raise NotLeader("the leader lock is no longer ours")
        if status == 0:
            return Accepted(found.decode(errors="replace"), True, event)
        return Accepted(job_id, False, event)

    def _dead_letter(
        self, data: Any, payload: JobPayload, reason: str, position: str | None = None
    ) -> Accepted:
        record = dead_letter_record(self.channel, data, payload, reason, self.clock())
        fence_key, fence_value = self.fence or ("", b"")
        replay_id = position or ("" if payload.replay_id is None else str(payload.replay_id))
        status = self._dead_script(
            keys=[fence_key, self.dead_key, self.replay_key, self.heartbeat_key],
            args=[fence_value, json.dumps(record), keys.DEAD_LETTERS_KEEP, replay_id, record["at"]],
        )
        if status == -1:
            raise NotLeader("the leader lock is no longer ours")
        log.error(
            "Platform event dead-lettered: it cannot become a job",
            extra={"reason": record["reason"], "dead_letter_key": self.dead_key},
        )
        return Accepted("", False, payload.to_payload(), dead_letter=True)

    def _recorded_enqueue(
        self, payload: JobPayload, job_id: str, seen_key: str
    ) -> list[tuple[Any, ...]]:
        """Exactly the writes RQ's enqueue would make, captured from a pipeline never executed."""
        recorder = self.redis.pipeline(transaction=False)
        queueing.enqueue_job(self.queue, payload, job_id, self.job_timeout, pipeline=recorder)
        recorder.set(seen_key, job_id, ex=keys.SEEN_TTL_SECONDS)
        commands = [args for args, _options in recorder.command_stack]
        recorder.reset()
        return commands

    def _replay_writes(
        self, event: dict[str, Any], position: str | None = None
    ) -> tuple[list[Any], list[Any]]:
        """The replay id, and the heartbeat's view of it (none for an event without one)."""
        if event["replay_id"] is None and position is None:
            return [], []
        replay_id = str(event["replay_id"] if event["replay_id"] is not None else position)
        heartbeat = ("HSET", self.heartbeat_key, "last_replay_id", replay_id)
        stored = position if position is not None else replay_id
        return [("SET", self.replay_key, stored)], [
            (*heartbeat, "last_event_at", f"{self.clock():.3f}")
        ]
