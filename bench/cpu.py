"""Where the CPU went during a stretch of a measurement (Linux /proc; zeros elsewhere).

Parts: the whole machine (every tenant of this shared box), this process (which hosts the
sandbox's emulators and drives the approvals), the processes we started (workers with their
work horses, the subscriber) and the Redis server (shared with whoever else uses it).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis


@dataclass(frozen=True)
class Sample:
    wall: float
    machine_busy: float  # CPU-seconds all cores spent not idle, since boot
    machine_total: float
    own: float
    redis: float
    groups: Mapping[str, float]


@dataclass(frozen=True)
class Usage:
    """CPU-seconds per part over `wall` seconds."""

    wall: float
    cores: int
    machine_busy_share: float
    parts: Mapping[str, float]

    def per_item_ms(self, count: int) -> dict[str, float]:
        return {name: seconds / max(count, 1) * 1000 for name, seconds in self.parts.items()}


def sample(conn: redis.Redis, groups: Mapping[str, Sequence[int]]) -> Sample:
    busy, total = _proc_stat()
    own = resource.getrusage(resource.RUSAGE_SELF)
    return Sample(
        wall=time.monotonic(),
        machine_busy=busy,
        machine_total=total,
        own=own.ru_utime + own.ru_stime,
        redis=_redis_cpu(conn),
        groups={name: processes_cpu(pids) for name, pids in groups.items()},
    )


def between(before: Sample, after: Sample) -> Usage:
    total = after.machine_total - before.machine_total
    busy = after.machine_busy - before.machine_busy
    parts = {
        "sandbox": after.own - before.own,
        **{name: after.groups[name] - before.groups.get(name, 0.0) for name in after.groups},
        "redis": after.redis - before.redis,
    }
    return Usage(
        wall=after.wall - before.wall,
        cores=os.cpu_count() or 1,
        machine_busy_share=busy / total if total > 0 else float("nan"),
        parts=parts,
    )


def processes_cpu(pids: Sequence[int]) -> float:
    """CPU-seconds of these processes and their reaped children (RQ's work horses)."""
    hertz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / hertz


def _proc_stat() -> tuple[float, float]:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    hertz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hertz, sum(ticks) / hertz


def _redis_cpu(conn: redis.Redis) -> float:
    try:
        info = conn.info("cpu")
    except redis.RedisError:
        return 0.0
    return float(info.get("used_cpu_sys", 0.0)) + float(info.get("used_cpu_user", 0.0))
