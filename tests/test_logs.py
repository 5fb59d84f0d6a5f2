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
