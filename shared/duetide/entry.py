"""Start-up shared by the function entry points: settings validated, logs configured."""

from __future__ import annotations

from duetide import logs
from duetide.config import get_settings


def start(function: str) -> None:
    """Validate configuration at import time (fail fast with the variable named) and log."""
    settings = get_settings()
    logs.setup(function, settings.duetide_log_level)
