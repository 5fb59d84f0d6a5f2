"""The provisioning job's one argument: the subscriber and the reconciler write it, workers read it.

A JSON object of five fields (docs/design.md "The job"): order_id (raw OrderId__c, never trusted:
the worker validates it), event_uuid, replay_id, published_at, channel. A job the reconciler made
has no event: channel is RECONCILER, event_uuid and replay_id are None, published_at is the
Order's LastModifiedDate. Job ids keep to ASCII [A-Za-z0-9_-], the alphabet RQ accepts
everywhere (`str.isalnum` also passes '¹' or 'é', which RQ refuses).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, fields
from typing import Any

RECONCILER = "reconciler"  # the channel of a job the reconciler made, not an event
MAX_ORDER_ID = 100  # a malformed OrderId__c is passed on (the worker refuses it), but short
MAX_UUID = 100
MAX_JOB_ID_PART = 64
_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def is_safe(text: str) -> bool:
    """Only ASCII letters, digits, '_' and '-': safe in an RQ job id and a Redis key name."""
    return bool(_SAFE.fullmatch(text))


def job_id_for(event_uuid: str | None, replay_id: object) -> str:
    """A stable, RQ-valid job id that ops can match to the event: evt-<EventUuid>, else
    evt-r<replayId>, else a random one (an event with neither cannot be deduplicated anyway)."""
    if event_uuid and len(event_uuid) <= MAX_JOB_ID_PART and is_safe(event_uuid):
        return f"evt-{event_uuid}"
    if _is_int(replay_id):
        return f"evt-r{replay_id}"
    return f"evt-x{uuid.uuid4().hex}"


def reconciled_job_id(order_id: str, approved_at: str) -> str:
    """One job id per order and approval: the Order's LastModifiedDate does not move while it
    sits Activating with nothing working on it, so two sweeps name the same job."""
    stamp = "".join(c for c in approved_at if c.isascii() and c.isdigit())[:24]
    return f"rec-{order_id}-{stamp}"


@dataclass(frozen=True)
class JobPayload:
    order_id: Any
    event_uuid: str | None = None
    replay_id: int | None = None
    published_at: Any = None
    channel: str = ""

    @classmethod
    def from_event(cls, channel: str, data: Any) -> JobPayload:
        """From a CometD event's `data`: every field checked for shape, nothing refused."""
        data = data if isinstance(data, dict) else {}
        payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
        header = data.get("event") if isinstance(data.get("event"), dict) else {}
        order_id = payload.get("OrderId__c")
        if isinstance(order_id, str):
            order_id = _utf8(order_id[:MAX_ORDER_ID])
        event_uuid = header.get("EventUuid")
        replay_id = header.get("replayId")
        published_at = payload.get("CreatedDate")
        return cls(
            order_id=order_id,
            event_uuid=_utf8(str(event_uuid)[:MAX_UUID]) if event_uuid else None,
            replay_id=replay_id if _is_int(replay_id) else None,
            published_at=_utf8(published_at) if isinstance(published_at, str) else published_at,
            channel=channel,
        )

    @classmethod
    def reconciled(cls, order_id: str, last_modified: str) -> JobPayload:
        return cls(order_id=order_id, published_at=last_modified, channel=RECONCILER)

    @classmethod
    def from_payload(cls, payload: Any) -> JobPayload:
        """What the worker reads from the job's argument, whoever wrote it (or whatever it is)."""
        data = payload if isinstance(payload, dict) else {}
        event_uuid = data.get("event_uuid")
        replay_id = data.get("replay_id")
        channel = data.get("channel")
        return cls(
            order_id=data.get("order_id"),
            event_uuid=str(event_uuid)[:MAX_UUID] if event_uuid else None,
            replay_id=replay_id if _is_int(replay_id) else None,
            published_at=data.get("published_at"),
            channel=channel if isinstance(channel, str) else "",
        )

    def to_payload(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict would recurse into whatever an event holds.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def job_id(self) -> str:
        if self.channel == RECONCILER:
            return reconciled_job_id(str(self.order_id), str(self.published_at or ""))
        return job_id_for(self.event_uuid, self.replay_id)

    def dedupe_id(self, job_id: str) -> str:
        """EventUuid when there is one, else the job id (itself from the replay id if possible)."""
        return self.event_uuid or job_id

    def meta(self) -> dict[str, Any]:
        """What rq-dashboard shows next to the job, and what ops (and the reconciler) search."""
        return {
            "order_id": self.order_id,
            "event_uuid": self.event_uuid,
            "replay_id": self.replay_id,
            "event_time": self.published_at,
            "source": "reconciler" if self.channel == RECONCILER else "event",
        }

    def description(self) -> str:
        order = str(self.order_id)[:40]
        if self.channel == RECONCILER:
            return f"Provision Order {order} (reconciled, no event; modified {self.published_at})"
        return (
            f"Provision Order {order} (event {self.event_uuid}, replay {self.replay_id}, "
            f"published {self.published_at})"
        )


def _utf8(text: str) -> str:
    """`text` with lone surrogates (a JSON escape such as \\udc80 decodes to one) made "?": they
    cannot be encoded for Redis, and an event that cannot be enqueued would stall the stream."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
