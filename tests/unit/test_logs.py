"""The functions' log: one JSON object a line, whoever logs."""

from __future__ import annotations

import json
import subprocess
import sys

LIBRARY_ERROR = """
import logging
from duetide import logs
logs.setup("tasks")
try:
    raise RuntimeError("cancelled")
except RuntimeError:
    logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
logging.getLogger("kafka.net.connection").error("broker gone")  # the outbox says it once
logging.getLogger("duetide.web.serve").info("ours")
"""


def test_what_a_library_logs_is_a_json_line_too() -> None:
    """uvicorn's errors went to Python's last resort, as plain text with a traceback a
    line, between the JSON lines (an audit, 2026-12-07); kafka-python's dozen error lines
    a second for a lost broker stay out (a review, 2026-12-07)."""
    ran = subprocess.run(
        [sys.executable, "-c", LIBRARY_ERROR], capture_output=True, text=True, timeout=60
    )
    lines = [json.loads(line) for line in ran.stderr.splitlines()]
    assert [(line["logger"], line["function"]) for line in lines] == [
        ("uvicorn.error", "tasks"),
        ("duetide.web.serve", "tasks"),
    ]
    assert "RuntimeError: cancelled" in lines[0]["exception"]
