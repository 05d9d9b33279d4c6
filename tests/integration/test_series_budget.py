"""Recurrence cost bounds and rule semantics through the API (issue 10, items 2 and 14)."""

from __future__ import annotations

from sqlmodel import select

from duetide.storage import db
from duetide.storage.models import Series
from tests.integration.test_series_api import bus, complete_open, open_occurrences, recurring

__all__ = ["bus"]  # the fixture, imported for these tests

ISSUE_RULE = "FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;BYHOUR=0;BYMINUTE=0"


def forecast(client, headers, series_id: str, count: int) -> dict:
    response = client.get(f"/series/{series_id}/occurrences?count={count}", headers=headers)
    assert response.status_code == 200, response.json
    return response.json


def test_sparse_rule_is_refused_at_creation_with_the_reason(client, alice):
    body = {
        "title": "x",
        "due_at": "2026-01-05T09:00:00Z",
        "recurrence": {"rrule": ISSUE_RULE, "timezone": "UTC"},
    }
    response = client.post("/tasks", json=body, headers=alice)
    assert response.status_code == 422, response.json
    error = response.json["error"]
    assert error["code"] == "validation_failed"
    assert "too sparse for FREQ=MINUTELY" in error["message"]
    assert error["details"][0]["field"] == "recurrence"
    assert client.get("/tasks", headers=alice).json["items"] == []


def test_sparse_rule_is_refused_on_change(client, alice, bus):
    series_id = recurring(client, alice, rrule="FREQ=DAILY")["series_id"]
    response = client.patch(
        f"/series/{series_id}",
        json={"recurrence": {"rrule": ISSUE_RULE, "timezone": "Europe/Berlin"}},
        headers=alice,
    )
    assert response.status_code == 422, response.json
    assert "too sparse" in response.json["error"]["message"]
    assert client.get(f"/series/{series_id}", headers=alice).json["rrule"] == "FREQ=DAILY"


def test_stored_sparse_rule_forecast_is_truncated_not_stalled(client, alice):
    """A row stored before the density check: the forecast stops at its work budget."""
    series_id = recurring(client, alice, rrule="FREQ=DAILY")["series_id"]
    with db.session_scope() as session:
        row = session.exec(select(Series).where(Series.id == series_id)).one()
        row.rrule = ISSUE_RULE
        session.add(row)
    answer = forecast(client, alice, series_id, 500)
    assert answer["truncated"] is True
    assert answer["items"][0] == "2026-01-05T09:00:00+01:00"
    assert all("-02-29T00:00:00" in at for at in answer["items"][1:])
    assert len(answer["items"]) < 500


def test_forecast_says_when_it_is_complete(client, alice):
    series_id = recurring(client, alice, rrule="FREQ=DAILY;COUNT=3")["series_id"]
    assert forecast(client, alice, series_id, 500) == {
        "items": [
            "2026-01-05T09:00:00+01:00",
            "2026-01-06T09:00:00+01:00",
            "2026-01-07T09:00:00+01:00",
        ],
        "truncated": False,
    }


def test_mixed_byday_is_a_set_through_the_api(client, alice):
    task = recurring(
        client, alice, rrule="FREQ=MONTHLY;BYDAY=SU,1FR", due_at="2025-01-05T09:00:00Z"
    )
    items = forecast(client, alice, task["series_id"], 6)["items"]
    assert [at[5:10] for at in items] == ["01-05", "01-12", "01-19", "01-26", "02-02", "02-07"]


def test_impossible_ordinal_is_a_422_not_a_500(client, alice):
    for rule in ("FREQ=MONTHLY;BYDAY=10SA", "FREQ=YEARLY;BYMONTH=12;BYDAY=53WE"):
        body = {"title": "x", "due_at": "2026-01-05T09:00:00Z", "recurrence": {"rrule": rule}}
        response = client.post("/tasks", json=body, headers=alice)
        assert response.status_code == 422, response.json
        assert "never matches" in response.json["error"]["message"]


def test_rebase_on_a_clamped_occurrence_keeps_the_31st(client, alice, bus):
    series_id = recurring(
        client, alice, rrule="FREQ=MONTHLY", month_end="clamp", due_at="2026-01-31T09:00:00+01:00"
    )["series_id"]
    complete_open(client, alice, bus, series_id)  # open: Feb 28 (clamped)
    response = client.patch(
        f"/series/{series_id}",
        json={
            "recurrence": {
                "rrule": "FREQ=MONTHLY",
                "month_end": "clamp",
                "timezone": "Europe/Berlin",
            }
        },
        headers=alice,
    )
    assert response.status_code == 200, response.json
    assert forecast(client, alice, series_id, 3)["items"] == [
        "2026-02-28T09:00:00+01:00",
        "2026-03-31T09:00:00+02:00",
        "2026-04-30T09:00:00+02:00",
    ]
    complete_open(client, alice, bus, series_id)
    assert open_occurrences(client, alice, series_id)[0]["due_at"] == "2026-03-31T09:00:00+02:00"


def test_rebase_on_a_gap_shifted_occurrence_keeps_the_nominal_time(client, alice, bus):
    series_id = recurring(
        client, alice, rrule="FREQ=DAILY", timezone="America/New_York",
        due_at="2026-03-07T02:30:00-05:00",
    )["series_id"]  # fmt: skip
    complete_open(client, alice, bus, series_id)  # open: Mar 8, 02:30 -> 03:30 EDT
    (current,) = open_occurrences(client, alice, series_id)
    assert current["due_at"] == "2026-03-08T03:30:00-04:00"
    response = client.patch(
        f"/series/{series_id}",
        json={"recurrence": {"rrule": "FREQ=DAILY;INTERVAL=2", "timezone": "America/New_York"}},
        headers=alice,
    )
    assert response.status_code == 200, response.json
    assert forecast(client, alice, series_id, 3)["items"] == [
        "2026-03-08T03:30:00-04:00",
        "2026-03-10T02:30:00-04:00",
        "2026-03-12T02:30:00-04:00",
    ]
