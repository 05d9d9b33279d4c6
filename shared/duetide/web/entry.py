"""Start-up shared by the function entry points: settings validated, logs configured,
and the framework's own HTTP errors answered in our JSON shape."""

from __future__ import annotations

import functions_framework
from flask import Response
from werkzeug.exceptions import HTTPException

from duetide import logs, telemetry
from duetide.config import get_settings
from duetide.errors import error_body
from duetide.web.http import json_response

_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _framework_error(error: HTTPException) -> Response:
    """Errors Flask raises before our code runs (a path its route cannot match)."""
    status = error.code or 400
    code = _CODES.get(status, "bad_request")
    return json_response(error_body(code, error.name), status)


def start(function: str) -> None:
    """Validate configuration at import time (fail fast with the variable named) and log."""
    settings = get_settings()
    logs.setup(function, settings.duetide_log_level)
    telemetry.configure(function)
    # Only the framework's app exists while it imports the function module.
    functions_framework.errorhandler(HTTPException)(_framework_error)
