"""What `http.guarded` answers for the database's errors: transient ones 503 (retry),
ones the content causes 400 (no retry)."""

from __future__ import annotations

import json

import pytest
from flask import Request
from sqlalchemy.exc import DataError, InternalError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.test import EnvironBuilder

from duetide.web.http import guarded


class _ProgramLimitExceeded(Exception):
    sqlstate = "54000"  # as psycopg.errors.ProgramLimitExceeded carries it


class _NumericValueOutOfRange(Exception):
    sqlstate = "22003"


def _answer(error: Exception) -> tuple[int, dict]:
    def handler(request: Request):
        raise error

    response = guarded(handler)(Request(EnvironBuilder(path="/x").get_environ()))
    return response.status_code, json.loads(response.get_data())["error"]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (OperationalError("SELECT 1", {}, ConnectionError("server closed")), 503),
        (PoolTimeout("QueuePool limit of size 10 overflow 5 reached"), 503),  # was a 500
        (OperationalError("INSERT", {}, _ProgramLimitExceeded("index row size")), 400),
        # A value the database refused (a missing check at the edge): it was a 500, and
        # an event carrying it was retried until dead-lettered.
        (DataError("INSERT", {}, _NumericValueOutOfRange("out of range")), 400),
        # The server ended a session idle in a transaction too long (25P03): it was a 500.
        (InternalError("SELECT 1", {}, Exception("idle"), connection_invalidated=True), 503),
        (InternalError("SELECT 1", {}, Exception("a bug"), connection_invalidated=False), 500),
    ],
)
def test_database_errors_are_classified_by_cause(error: Exception, status: int) -> None:
    answered, body = _answer(error)
    assert answered == status
    assert body["code"] == {503: "unavailable", 400: "bad_request", 500: "internal"}[status]
