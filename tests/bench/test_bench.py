"""`python -m bench --quick` completes and writes well-formed results with every measurement.

No figure is checked here: timings on a shared machine are for the bench's own table, not tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.connections import redis_client
from tests.fixtures.infra import TEST_DATABASE_URL, TEST_REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
MEASUREMENTS = {1, 2, 3, 4, 5, 6, 7, 8}
ROW_KEYS = {"figure", "value", "unit", "reference", "reference_value", "ratio", "target", "met"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One quick run shared by the tests below, against the test Redis database."""
    out = tmp_path_factory.mktemp("bench-results")
    redis_client(TEST_REDIS_URL).flushdb()  # the bench refuses a database it did not write
    args = ["--quick", "--redis-url", TEST_REDIS_URL, "--database-url", TEST_DATABASE_URL]
    args += ["--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return proc, out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_completes(quick_run):
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_json_has_every_measurement_with_well_formed_rows(quick_run):
    _, out = quick_run
    doc = json.loads((out / "latest.json").read_text())
    assert doc["quick"] is True
    assert doc["command"] == "python -m bench --quick"
    assert {"nproc", "cpu", "python", "redis", "rq"} <= set(doc["machine"])
    by_number = {m["number"]: m for m in doc["measurements"]}
    assert set(by_number) == MEASUREMENTS
    for number, measurement in by_number.items():
        assert measurement["status"] == "ok", (number, measurement["reason"])
        assert measurement["rows"], number
        for row in measurement["rows"]:
            assert set(row) == ROW_KEYS
            assert row["value"] >= 0
            assert row["met"] in (True, False, None)
            if row["reference_value"]:
                assert row["ratio"] == pytest.approx(row["value"] / row["reference_value"], 1e-2)
            if row["target"]:
                assert row["met"] is not None, row


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_markdown_table_lists_every_measurement(quick_run):
    _, out = quick_run
    text = (out / "latest.md").read_text()
    assert "| # | figure | value | reference | ratio | target | met |" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert {int(line.split("|")[1]) for line in table[1:]} == MEASUREMENTS
    assert "python -m bench --quick" in text
