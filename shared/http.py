"""HTTP sessions with timeouts on by default and TLS verification always on.

A private CA (the sandbox's, or a company proxy's) is trusted through REQUESTS_CA_BUNDLE, which
requests reads from the environment for every call; nothing here can turn verification off.
"""

from __future__ import annotations

from typing import Any

import requests


class TimeoutSession(requests.Session):
    """A requests.Session whose calls get (connect, read) timeouts unless the caller gives one."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        super().__init__()
        self.default_timeout = (connect_timeout, read_timeout)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any):  # type: ignore[override]
        kwargs.setdefault("timeout", self.default_timeout)
        return super().request(method, url, *args, **kwargs)
