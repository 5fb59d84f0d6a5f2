"""Jobs of known cost for the worker-class measurement: nothing, and a fixed sleep.

A module of their own that imports nothing of ours: a forked or spawned work horse imports the
job's module per job, and that import would be counted as the job's time."""

from __future__ import annotations

import time


def noop(i: int) -> int:
    return i


def sleep_ms(milliseconds: float) -> None:
    time.sleep(milliseconds / 1000)
