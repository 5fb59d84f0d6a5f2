"""What every measurement shares: the run's settings, result rows with targets, statistics."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from provisioner.kit.database import claim_database, empty_database
from shared.connections import redis_client

# A key the bench leaves in its database (its pid), so a later run knows it may flush that database
# (and refuses to flush one that holds anything else).
MARKER_KEY = "bench:owned"
REPO_ROOT = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    """A measurement could not be taken; the message says why."""


class Skipped(Exception):
    """A measurement cannot run (what it needs is missing); the message says which."""


@dataclass(frozen=True)
class Target:
    """A limit on a row's ratio (the default) or on its value."""

    limit: float
    op: str = "<="
    on: str = "ratio"

    def met(self, value: float, ratio: float | None) -> bool | None:
        subject = ratio if self.on == "ratio" else value
        if subject is None or math.isnan(subject):
            return None
        checks = {"<=": subject <= self.limit, "<": subject < self.limit}
        return checks.get(self.op, subject >= self.limit)

    def text(self, unit: str) -> str:
        if self.on == "ratio":
            return f"{self.op} {self.limit:g}x"
        return f"{self.op} {self.limit:g} {unit}".rstrip()


@dataclass
class Row:
    figure: str
    value: float
    unit: str
    reference: str = ""
    reference_value: float | None = None
    target: Target | None = None

    @property
    def ratio(self) -> float | None:
        if not self.reference_value:
            return None
        return self.value / self.reference_value

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value, self.ratio)

    def as_dict(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "figure": self.figure,
            "value": _round(self.value),
            "unit": self.unit,
            "reference": self.reference,
            "reference_value": _round(self.reference_value),
            "ratio": None if ratio is None else round(ratio, 4),
            "target": None if self.target is None else self.target.text(self.unit),
            "met": self.met,
        }


@dataclass
class Measurement:
    number: int
    key: str
    title: str
    # In the order of the results file's keys.
    status: str = "ok"  # ok | skipped | error
    reason: str = ""
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        rows = [row.as_dict() for row in self.rows]
        return {**vars(self), "seconds": round(self.seconds, 1), "rows": rows}


@dataclass
class Run:
    """One bench run: where its Redis database is, how big, where scratch files go."""

    redis_url: str
    database_url: str  # a PostgreSQL server the bench makes its own database on, or sqlite
    quick: bool
    work_dir: Path
    command: str
    # Figures one measurement hands to a later one (the scaling run feeds the API counts).
    shared: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def redis(self) -> redis.Redis:
        return redis_client(self.redis_url)

    def close(self) -> None:
        """Stop what measurements left running for later ones (the sandbox), newest first."""
        while self.closers:
            self.closers.pop()()


def claim_bench_database(url: str) -> None:
    """Empty the bench database, refusing one that holds keys no bench wrote."""
    if not claim_database(url, MARKER_KEY):
        raise BenchError(
            "the bench Redis database is not empty and was not written by the bench; "
            "point --redis-url at an unused database number"
        )


def reset_database(conn: redis.Redis) -> None:
    empty_database(conn, MARKER_KEY)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): always one of the measured values."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def p50_p99(
    figure: str, values: Sequence[float], reference: str, reference_value: float, p99_limit: float
) -> list[Row]:
    """The median and the 99th percentile of `values` (ms), the p99 held below `p99_limit`."""
    below = Target(p99_limit, "<", "value")
    return [
        Row(f"{figure}, p50", percentile(values, 50), "ms", reference, reference_value),
        Row(f"{figure}, p99", percentile(values, 99), "ms", reference, reference_value, below),
    ]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _round(value: float | None) -> float | None:
    if value is None or value == 0 or math.isnan(value) or math.isinf(value):
        return value
    return float(f"{value:.4g}")
