"""Pub/Sub events into the shape the intake takes: Avro decoding with schemas cached by id.

A payload is bare Avro binary written with the schema named by `schema_id` (Salesforce's MD5
fingerprint of it, so a new field on the event means a new id): an unknown id is fetched once
with GetSchema and cached for the life of the process, so a schema change decodes without a
restart. The result has the CometD event's shape (`payload`, `event.EventUuid`,
`event.replayId`, CreatedDate as Salesforce's ISO text), so the job payload is the same whichever
transport brought the event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import fastavro

log = logging.getLogger(__name__)


def iso_datetime(epoch_ms: Any) -> Any:
    """Epoch milliseconds as CometD writes CreatedDate (2026-01-31T12:00:00.000Z)."""
    if not isinstance(epoch_ms, int) or isinstance(epoch_ms, bool):
        return epoch_ms
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


class Schemas:
    """Parsed schemas by id; `fetch(schema_id)` returns the schema JSON (GetSchema)."""

    def __init__(self, fetch: Callable[[str], str]) -> None:
        self.fetch = fetch
        self._parsed: dict[str, Any] = {}

    def get(self, schema_id: str) -> Any:
        parsed = self._parsed.get(schema_id)
        if parsed is None:
            parsed = fastavro.parse_schema(json.loads(self.fetch(schema_id)))
            self._parsed[schema_id] = parsed
            log.info("Platform event schema loaded", extra={"schema_id": schema_id})
        return parsed

    def __len__(self) -> int:
        return len(self._parsed)


# What fastavro raises for bytes that are not a record of the schema
# (tests/subscriber/test_pubsub.py holds this against arbitrary bytes).
UNDECODABLE = (ValueError, EOFError, KeyError, TypeError, IndexError)


def decode(payload: bytes, parsed: Any) -> dict[str, Any]:
    record = fastavro.schemaless_reader(BytesIO(payload), parsed, None)
    record = dict(record) if isinstance(record, dict) else {}
    if "CreatedDate" in record:
        record["CreatedDate"] = iso_datetime(record["CreatedDate"])
    return record


def event_data(event_id: str, replay_id: int | None, record: dict[str, Any]) -> dict[str, Any]:
    """The CometD `data` of the same event, which is what the intake reads."""
    return {"payload": record, "event": {"EventUuid": event_id or None, "replayId": replay_id}}
