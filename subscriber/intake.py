"""One platform event in: deduplicate on EventUuid, enqueue its RQ job, advance the replay id.

All of it is one atomic step in Redis, one round trip: a Lua script checks the leader lock
(the fence) and the dedupe key `sf:pe:seen:<EventUuid>`, then runs the exact writes that RQ's
`enqueue_call(pipeline=...)` recorded into a never-executed pipeline (job hash, queue push),
sets the dedupe key, and only then the replay id. A crash at any instant leaves all or nothing:
the replay id never moves ahead of the queue, and a redelivered event never becomes a second job.
RQ's own job-id reuse is not a dedupe (it overwrites the hash and queues the id again), and
`unique=True` cannot share a transaction with our keys (it ignores the pipeline).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from shared import keys, queueing
from shared.logs import bind

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

MAX_ORDER_ID = 100  # a malformed OrderId__c is passed on (the worker refuses it), but short
MAX_UUID = 100


class NotLeader(Exception):
    """The leader lock is no longer ours: another subscriber owns the channel now."""


@dataclass(frozen=True)
class Accepted:
    job_id: str
    duplicate: bool
    event: dict[str, Any]


def job_event(channel: str, data: Any) -> dict[str, Any]:
    """The job's argument (docs/design.md "The job") from a CometD event's `data`."""
    data = data if isinstance(data, dict) else {}
    payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
    header = data.get("event") if isinstance(data.get("event"), dict) else {}
    order_id = payload.get("OrderId__c")
    if isinstance(order_id, str):
        order_id = _utf8(order_id[:MAX_ORDER_ID])
    event_uuid = header.get("EventUuid")
    replay_id = header.get("replayId")
    published_at = payload.get("CreatedDate")
    return {
        "order_id": order_id,
        "event_uuid": _utf8(str(event_uuid)[:MAX_UUID]) if event_uuid else None,
        "replay_id": replay_id if _is_int(replay_id) else None,
        "published_at": _utf8(published_at) if isinstance(published_at, str) else published_at,
        "channel": channel,
    }


def _utf8(text: str) -> str:
    """`text` with lone surrogates (a JSON escape such as \\udc80 decodes to one) made "?": they
    cannot be encoded for Redis, and an event that cannot be enqueued would stall the stream."""
    return text.encode("utf-8", "replace").decode("utf-8")


def job_meta(event: dict[str, Any]) -> dict[str, Any]:
    """What rq-dashboard shows next to the job, and what ops search for."""
    return {
        "order_id": event["order_id"],
        "event_uuid": event["event_uuid"],
        "replay_id": event["replay_id"],
        "event_time": event["published_at"],
    }


def job_description(event: dict[str, Any]) -> str:
    order = str(event["order_id"])[:40]
    return (
        f"Provision Order {order} (event {event['event_uuid']}, replay {event['replay_id']}, "
        f"published {event['published_at']})"
    )


def dedupe_id(event: dict[str, Any], job_id: str) -> str:
    """EventUuid when there is one, else the job id (itself from the replay id if possible)."""
    return event["event_uuid"] or job_id


def _flatten(commands: list[tuple[Any, ...]]) -> list[Any]:
    """A group of commands as script arguments: count, then per command argc and its args."""
    flat: list[Any] = [len(commands)]
    for command in commands:
        flat.append(len(command))
        flat.extend(command)
    return flat


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        self._accept_script = connection.register_script(ACCEPT_SCRIPT)

    def accept(self, data: Any, position: str | None = None) -> Accepted:
        """Enqueue the event's job unless it was seen before; advance the replay id either way.

        `position`: what to store as the replay position instead of the event's replay id (the
        Pub/Sub transport's opaque id, as hex)."""
        event = job_event(self.channel, data)
        job_id = queueing.job_id_for(event["event_uuid"], event["replay_id"])
        with bind(
            order_id=event["order_id"] if isinstance(event["order_id"], str) else None,
            event_uuid=event["event_uuid"],
            replay_id=event["replay_id"],
            channel=self.channel,
        ):
            accepted = self._commit(event, job_id, position)
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

    def _commit(self, event: dict[str, Any], job_id: str, position: str | None = None) -> Accepted:
        seen_key = keys.seen_key(dedupe_id(event, job_id))
        fence_key, fence_value = self.fence or (seen_key, b"")
        groups = (
            self._recorded_enqueue(event, job_id, seen_key),
            *self._replay_writes(event, position),
            [("HINCRBY", self.heartbeat_key, "events_enqueued", 1)],
            [("HINCRBY", self.heartbeat_key, "duplicates", 1)],
        )
        status, found = self._accept_script(
            keys=[seen_key, fence_key],
            args=[fence_value, job_id, *(arg for group in groups for arg in _flatten(group))],
        )
        if status == -1:
            raise NotLeader("the leader lock is no longer ours")
        if status == 0:
            return Accepted(found.decode(errors="replace"), True, event)
        return Accepted(job_id, False, event)

    def _recorded_enqueue(
        self, event: dict[str, Any], job_id: str, seen_key: str
    ) -> list[tuple[Any, ...]]:
        """Exactly the writes RQ's enqueue would make, captured from a pipeline never executed."""
        recorder = self.redis.pipeline(transaction=False)
        self._enqueue(recorder, event, job_id)
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

    def _enqueue(self, pipe: Any, event: dict[str, Any], job_id: str) -> None:
        self.queue.enqueue_call(
            queueing.JOB_PATH,
            args=(event,),
            job_id=job_id,
            timeout=self.job_timeout,
            result_ttl=queueing.RESULT_TTL,
            failure_ttl=queueing.FAILURE_TTL,
            description=job_description(event),
            meta=job_meta(event),
            retry=None,  # a failed fulfilment ends as a Failed order, never a silent re-run
            pipeline=pipe,
        )
