"""The results files: bench/results/latest.json (data) and latest.md (the README's table)."""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import rq

from bench.harness import Measurement

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The PostgreSQL server on which a run creates (and drops) its own database.
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def machine(conn: redis.Redis) -> dict[str, Any]:
    """What the figures were measured on: ratios travel, absolute times only with this."""
    try:
        redis_version = conn.info("server").get("redis_version", "unknown")
    except redis.RedisError:
        redis_version = "unknown"
    memory_kib = _proc_value("/proc/meminfo", "MemTotal:")
    return {
        "nproc": os.cpu_count(),
        "cpu": _proc_value("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "memory_gib": memory_kib and round(int(memory_kib.split()[0]) / 1024 / 1024, 1),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "redis": redis_version,
        "rq": rq.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def document(
    measurements: Sequence[Measurement], machine_info: dict[str, Any], command: str, quick: bool
) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "quick": quick,
        "machine": machine_info,
        "measurements": [m.as_dict() for m in measurements],
    }


def write(doc: dict[str, Any], out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write both files atomically (a .tmp then rename), so a killed run leaves the old ones."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / "latest.json", out_dir / "latest.md")
    texts = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n", markdown(doc))
    for path, text in zip(paths, texts, strict=True):
        write_atomically(path, text)
    return paths


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"Measured {doc['date']} with `{doc['command']}`"
        + (" (quick smoke run: small counts, figures are rough)" if doc["quick"] else "")
        + ".",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}, Redis {m['redis']}, rq {m['rq']}, "
        f"database {m.get('database', 'not used')}; "
        f"load average at start {', '.join(str(x) for x in m['load_average_at_start'])}.",
        "",
        "| # | figure | value | reference | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for measurement in doc["measurements"]:
        lines.extend(_table_rows(measurement))
    lines.append("")
    for measurement in doc["measurements"]:
        lines.extend(_notes(measurement))
    return "\n".join(lines).rstrip() + "\n"


def _table_rows(measurement: dict[str, Any]) -> list[str]:
    number = measurement["number"]
    out = []
    if measurement["status"] != "ok":
        why = measurement["reason"].splitlines()[0] if measurement["reason"] else ""
        out.append(
            f"| {number} | {measurement['title']}: **{measurement['status']}** ({_cell(why)}) "
            "| | | | | |"
        )
    for row in measurement["rows"]:
        reference = row["reference"]
        if row["reference_value"] is not None:
            reference = f"{reference}: {_num(row['reference_value'])} {row['unit']}".strip(": ")
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        out.append(
            f"| {number} | {_cell(row['figure'])} | {_num(row['value'])} {row['unit']} "
            f"| {_cell(reference)} | {ratio} | {row['target'] or ''} | {_met(row['met'])} |"
        )
    return out


def _notes(measurement: dict[str, Any]) -> list[str]:
    lines = [f"**{measurement['number']}. {measurement['title']}**"]
    if measurement["status"] != "ok":
        lines.append(f"- {measurement['status']}: {measurement['reason']}")
    lines.extend(f"- {note}" for note in measurement["notes"])
    return [*lines, ""] if len(lines) > 1 else []


def _met(met: bool | None) -> str:
    return {True: "yes", False: "**NO**", None: ""}[met]


def _num(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _proc_value(path: str, prefix: str) -> str | None:
    """What follows `prefix:` on its line of a /proc file; None where there is no such file."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(prefix)), None)
