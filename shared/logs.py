"""JSON logging on stdout, context bound per event or job, secrets scrubbed from every value.

`configure_logging()` runs once per process, before RQ starts (RQ then adds no handlers of its own).
`bind(order_id=..., step=...)` adds fields to every line logged inside the `with` block.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from pythonjsonlogger.json import JsonFormatter

CONTEXT_FIELDS = ("service", "order_id", "job_id", "step", "replay_id", "event_uuid", "channel")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "log_context", default=None
)
_secrets: list[str] = []
REDACTED = "***"


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add fields to every log line emitted in this block (and in code it calls)."""
    bound = {k: v for k, v in fields.items() if v is not None}
    token = _context.set({**(_context.get() or {}), **bound})
    try:
        yield
    finally:
        _context.reset(token)


def register_secrets(values: Iterable[str]) -> None:
    """Values that are replaced by *** wherever they appear in a log line."""
    for value in values:
        if value and len(value) >= 4 and value not in _secrets:
            _secrets.append(value)


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every registered secret (and every one of `extra`) replaced by ***."""
    for secret in (*_secrets, *extra):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


_PLAIN = (bool, int, float, type(None), datetime.date, datetime.time)


def scrub_value(value: Any) -> Any:
    """A log field with secrets removed from every string in it, keys included.

    Done on the values, before JSON encoding: once encoded, a secret holding a quote, a
    backslash or a non-ASCII character is escaped (\\" \\\\ \\u00e9) and no longer matches.
    Any other object is turned into its text here, as the encoder would, so it is scrubbed too.
    """
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {scrub_value(k): scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub_value(v) for v in value]
    return scrub(str(value))


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class _ScrubbingFormatter(JsonFormatter):
    """Removes secrets from every value (message and traceback included) before encoding, then
    from the finished line too, in case one hides in a place no value covers."""

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {scrub_value(k): scrub_value(v) for k, v in log_data.items()}

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure_logging(level: str = "INFO", service: str = "", stream: Any = None) -> None:
    """Route every logger (ours, RQ's, werkzeug's) through one JSON handler on stdout."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        _ScrubbingFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service} if service else None,
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # RQ forces rq.worker to INFO at import and would add its own coloured handler to a logger
    # without one in its ancestry; with the root handler in place it only propagates.
    for name in ("rq.worker", "rq.job", "rq.queue", "rq.registry", "rq.scheduler"):
        logging.getLogger(name).handlers.clear()
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
