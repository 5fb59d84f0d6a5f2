"""Reading what RQ recorded about finished jobs: status and the in-job start and end times."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # rq.utils' timestamp format (UTC)


@dataclass(frozen=True)
class JobTimes:
    job_id: str
    status: str
    started_at: float | None
    ended_at: float | None

    @property
    def in_job(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


def epoch(raw: bytes | str | None) -> float | None:
    if not raw:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    stamp = datetime.datetime.strptime(text, _FORMAT).replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


def fetch_times(conn: redis.Redis, job_ids: Iterable[str]) -> list[JobTimes]:
    ids = list(job_ids)
    pipe = conn.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(f"rq:job:{job_id}", "status", "started_at", "ended_at")
    return [
        JobTimes(job_id, (status or b"missing").decode(), *map(epoch, stamps))
        for job_id, (status, *stamps) in zip(ids, pipe.execute(), strict=True)
    ]


def window(times: Sequence[JobTimes]) -> tuple[float, float]:
    """First in-job start and last in-job end over the jobs: the busy window of the workers."""
    starts = [t.started_at for t in times if t.started_at is not None]
    ends = [t.ended_at for t in times if t.ended_at is not None]
    return min(starts), max(ends)


def per_job_seconds(times: Sequence[JobTimes], processes: int = 1) -> float:
    """Seconds each further job costs one of `processes` workers draining a queue together.

    Taken from the in-job start times (first to last), so worker start-up is outside it. With
    P processes the first P jobs start together, hence the span covers N - P job cycles.
    """
    starts = sorted(t.started_at for t in times if t.started_at is not None)
    if len(starts) <= processes:
        raise ValueError(f"need more than {processes} started jobs")
    return (starts[-1] - starts[0]) / (len(starts) - processes) * processes
