"""What to do after each Bayeux reply, and how long to back off: pure decisions.

Salesforce's advice and errors, mapped to four moves:
CONTINUE (keep polling), RETRY (connect again after the interval), REHANDSHAKE (back off, then a
full handshake and subscribe from the stored replay id) and REAUTH (a new token first).
"""

from __future__ import annotations

import enum

from subscriber.cometd import Reply


class Next(enum.Enum):
    CONTINUE = "continue"
    RETRY = "retry"
    REHANDSHAKE = "rehandshake"
    REAUTH = "reauth"


def _auth_failure(reply: Reply) -> bool:
    return reply.code == 401 or reply.failure_reason.startswith("401")


def _unknown_client(reply: Reply) -> bool:
    return reply.code == 403 and "unknown client" in reply.error.lower()


def after_handshake(reply: Reply) -> Next:
    if reply.successful:
        return Next.CONTINUE
    if _auth_failure(reply) or "handshake denied" in reply.error.lower():
        return Next.REAUTH
    return Next.REHANDSHAKE


def after_subscribe(reply: Reply) -> Next:
    if reply.successful:
        return Next.CONTINUE
    if _auth_failure(reply):
        return Next.REAUTH
    return Next.REHANDSHAKE


def after_connect(reply: Reply, server_disconnected: bool = False) -> Next:
    """A /meta/connect reply: follow `advice.reconnect`; a lost session means a new one."""
    if reply.successful and not server_disconnected:
        return Next.CONTINUE
    if _auth_failure(reply):
        return Next.REAUTH
    if _unknown_client(reply) or server_disconnected or reply.reconnect == "handshake":
        return Next.REHANDSHAKE
    if reply.reconnect == "none":
        return Next.REAUTH  # the server will not talk to this session or token again
    if reply.reconnect == "retry":
        return Next.RETRY
    return Next.REHANDSHAKE


def backoff_delay(attempt: int, rand: float, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds before reconnect attempt `attempt` (0-based): doubling, capped, half jittered.

    `rand` in [0, 1) spreads replicas and restarts apart so they do not retry in step.
    """
    ceiling = min(cap, base * 2 ** min(attempt, 16))
    return ceiling / 2 + ceiling / 2 * rand
