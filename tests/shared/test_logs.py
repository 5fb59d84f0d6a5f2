"""JSON logging: one object per line, bound context, secrets never printed."""

from __future__ import annotations

import io
import json
import logging

import pytest

from shared import logs


@pytest.fixture
def stream():
    buffer = io.StringIO()
    logs.configure_logging("DEBUG", "test-service", stream=buffer)
    yield buffer
    logging.getLogger().handlers.clear()


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_lines_are_json_with_standard_fields(stream):
    logging.getLogger("x.y").info("hello", extra={"answer": 42})
    (line,) = lines(stream)
    assert line["message"] == "hello"
    assert line["level"] == "INFO"
    assert line["logger"] == "x.y"
    assert line["service"] == "test-service"
    assert line["answer"] == 42
    assert "time" in line


def test_bound_context_reaches_every_line_and_unbinds(stream):
    log = logging.getLogger("ctx")
    with logs.bind(order_id="801x", job_id="evt-1"), logs.bind(step="mapping"):
        log.info("inside")
    log.info("outside")
    inside, outside = lines(stream)
    assert (inside["order_id"], inside["job_id"], inside["step"]) == ("801x", "evt-1", "mapping")
    assert "order_id" not in outside


def test_registered_secrets_are_scrubbed_everywhere(stream):
    logs.register_secrets(["canary-SECRET-123"])
    log = logging.getLogger("leak")
    log.info("token is %s", "canary-SECRET-123", extra={"header": "Bearer canary-SECRET-123"})
    try:
        raise ValueError("failed with canary-SECRET-123")
    except ValueError:
        log.exception("boom")
    assert "canary-SECRET-123" not in stream.getvalue()
    assert "***" in stream.getvalue()


@pytest.mark.parametrize(
    "secret",
    ['pa"ss-canary-1', "back\\slash-canary-2", "n\u00f6n-ascii-canary-3", "tab\tcanary-4"],
)
def test_a_secret_that_json_would_escape_is_scrubbed_from_the_values(stream, secret):
    """Scrubbing after encoding missed these: the line holds \\" \\\\ \\u00f6, not the secret."""
    logs.register_secrets([secret])
    log = logging.getLogger("leak")
    log.info("said %s", secret, extra={"body": {"error": secret, secret: [secret]}})
    try:
        raise ValueError(f"refused: {secret}")
    except ValueError:
        log.exception("boom")
    text = stream.getvalue()
    for form in (secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
        assert form not in text
    decoded = json.dumps(lines(stream), ensure_ascii=False)
    assert secret not in decoded
    assert "***" in lines(stream)[0]["message"] and "***" in lines(stream)[1]["exc_info"]


def test_objects_in_a_log_field_are_scrubbed_as_text(stream):
    logs.register_secrets(['obj"canary-5'])

    class Holder:
        def __str__(self) -> str:
            return 'holds obj"canary-5'

    logging.getLogger("leak").info("x", extra={"thing": Holder(), "n": 3, "ok": True})
    (line,) = lines(stream)
    assert line["thing"] == "holds ***" and line["n"] == 3 and line["ok"] is True
