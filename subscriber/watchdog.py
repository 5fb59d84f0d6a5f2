"""The stall watchdog: a subscriber must never sit "connected" and deaf.

Salesforce answers every /meta/connect within its advised timeout (110 s), with events or
without; if no successful reply came for twice that, the session is dead whatever the socket
says, and the stream starts a new one (handshake, subscribe from the stored replay id).
"""

from __future__ import annotations

STALL_FACTOR = 2.0


def is_stalled(now: float, last_success: float, advised_timeout: float) -> bool:
    """No successful connect reply since `last_success` for longer than twice the timeout."""
    return now - last_success > STALL_FACTOR * advised_timeout
