"""Jobs of known cost for the worker-class measurement: nothing, and a fixed sleep."""

from __future__ import annotations

import time


def noop(i: int) -> int:
    return i


def sleep_ms(milliseconds: float) -> None:
    time.sleep(milliseconds / 1000)
