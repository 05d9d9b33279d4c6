"""Structured logs: one JSON object per line on stderr, ids only, never payloads or tokens.

What a log pipeline filters on is a top-level field of each line, not text inside the
message: `event` names what happened (`log_event`), the ids it happened to stand beside
it (`task_id`, `reminder_id`, `series_id`, `event_id`, ...), and every line written
while a request or an event is handled carries its `trace_id` and `span_id`
(`tracecontext`), so one trace's lines can be found across the functions.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from duetide import tracecontext

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, function: str):
        super().__init__()
        self.function = function

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "function": self.function,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = tracecontext.current()
        if span is not None:
            entry["trace_id"] = span.trace_id
            entry["span_id"] = span.span_id
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_event(
    logger: logging.Logger, event: str, /, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log `event` (a dotted name such as `notification.delivered`) with `fields` as
    top-level fields of the line. Ids and counts only: no titles, addresses or tokens."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"event": event, **fields})


def setup(function: str, level: str = "INFO") -> None:
    """Route the `duetide` loggers to stderr as JSON lines at `level`, and what the
    libraries log at WARNING and above (uvicorn's errors, the drivers') the same way
    (idempotent). Without a handler of the root logger's, Python's last resort wrote
    those as plain text, a traceback a line, between the JSON lines (an audit,
    2026-12-07)."""
    for logger in (logging.getLogger("duetide"), logging.getLogger()):
        if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonFormatter(function))
            logger.addHandler(handler)
    duetide = logging.getLogger("duetide")
    duetide.setLevel(level.upper())
    duetide.propagate = False  # its own handler writes it once
    # kafka-python says a lost broker in a dozen error lines a second per producer, where
    # the outbox says it once (`outbox.publish_failed`); its NullHandler kept them out
    # before the root had a handler (a review, 2026-12-07).
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
