"""Every Redis key the processes share, in one place (the runbook's names are the contract)."""

from __future__ import annotations

# Streaming (written by the subscriber, read by health, doctor and `provisioner replay`).
REPLAY_PREFIX = "sf:pe:replay:"  # sf:pe:replay:<channel> -> last replayId safely enqueued
# sf:pe:pubsub:replay:<channel> -> the Pub/Sub API's opaque replay id (hex) of the last event
# safely enqueued, or of the last keepalive. Never the CometD key: switching transports must not
# resume from the other transport's id.
PUBSUB_REPLAY_PREFIX = "sf:pe:pubsub:replay:"
SEEN_PREFIX = "sf:pe:seen:"  # sf:pe:seen:<EventUuid> -> job id; dedupe window
SEEN_TTL_SECONDS = 4 * 24 * 3600  # longer than Salesforce's 72 h event retention
LEADER_PREFIX = "sf:pe:leader:"  # sf:pe:leader:<channel> -> holder id, TTL renewed while alive
HEARTBEAT_PREFIX = "sf:pe:heartbeat:"  # hash, see subscriber/heartbeat.py
GAPS_PREFIX = "sf:pe:gaps:"  # list of JSON records of invalid-replay fallbacks, newest first
GAPS_KEEP = 50
DEAD_PREFIX = "sf:pe:dead:"  # list of JSON records of events that cannot become jobs, newest 1st
DEAD_LETTERS_KEEP = 1000

# Salesforce token shared by every process.
SF_TOKEN = "sf:auth:token"  # hash: access_token, instance_url, minted_at
SF_TOKEN_LOCK = "sf:auth:lock"  # single-flight mint lock
SF_TOKEN_MINTS = "sf:auth:mints"  # counter, for doctor and metrics

# Fulfilment (written by workers).
ORDER_LOCK_PREFIX = "prov:lock:order:"  # prov:lock:order:<OrderId> -> token, TTL = ORDER_LOCK_TTL
INFLIGHT = "prov:inflight"  # hash OrderId -> JSON {job_id, token, started_at, worker}
CLOCK_OFFSETS = "prov:clock:offsets"  # hash worker name -> "seconds ahead of Redis:measured at"
WHMCS_PRODUCTS = "whmcs:products"  # cached GetProducts answer (JSON), short TTL
OUTBOX = "prov:outbox"  # hash OrderId -> a terminal outcome Salesforce has not taken yet

# Reconciliation (worker/reconciler.py).
RECONCILER_LEADER = "prov:reconciler:leader"  # holder id, TTL renewed: one sweeper system-wide
RECONCILER_STATE = "prov:reconciler"  # hash: last sweep, counts, oldest Activating order
RECONCILED_PREFIX = "prov:reconciled:"  # prov:reconciled:<job id> -> when; one job per approval


def replay_key(channel: str) -> str:
    return REPLAY_PREFIX + channel


def pubsub_replay_key(channel: str) -> str:
    return PUBSUB_REPLAY_PREFIX + channel


def seen_key(event_uuid: str) -> str:
    return SEEN_PREFIX + event_uuid


def leader_key(channel: str) -> str:
    return LEADER_PREFIX + channel


def heartbeat_key(channel: str) -> str:
    return HEARTBEAT_PREFIX + channel


def gaps_key(channel: str) -> str:
    return GAPS_PREFIX + channel


def dead_letters_key(channel: str) -> str:
    return DEAD_PREFIX + channel


def reconciled_key(job_id: str) -> str:
    return RECONCILED_PREFIX + job_id


def order_lock_key(order_id: str) -> str:
    return ORDER_LOCK_PREFIX + order_id
