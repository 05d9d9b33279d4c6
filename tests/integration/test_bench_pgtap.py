"""bench/pgtap.py between psycopg and a real PostgreSQL: what it records of a session."""

from __future__ import annotations

import psycopg
import pytest
from bench.pgtap import WireTap
from psycopg.conninfo import conninfo_to_dict

from tests.integration.conftest import POSTGRES_URL
from tests.support import libpq

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="DUETIDE_TEST_POSTGRES_URL is empty")


def test_the_tap_records_each_statement_and_round_trip_and_sees_the_session_go_idle() -> None:
    params = conninfo_to_dict(libpq(POSTGRES_URL))
    tap = WireTap((str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)))
    try:
        params.update(port=tap.port, sslmode="disable", gssencmode="disable")
        with psycopg.connect(**params) as connection:  # type: ignore[arg-type]
            mark = tap.mark()
            assert connection.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)
            assert tap.state() == {1: (0, "T")}  # answered, inside the transaction
            connection.commit()
            assert tap.wait_idle(5)
            events = [(e.kind, e.sql) for e in tap.since(mark)]
    finally:
        tap.close()
    assert events == [
        ("query", "BEGIN"),
        ("ready", ""),
        ("parse", "SELECT $1::int + 1"),
        ("execute", "SELECT $1::int + 1"),
        ("ready", ""),
        ("query", "COMMIT"),
        ("ready", ""),
    ]
