"""sweep: on each ping, claim due reminders once and relay unsent outbox rows."""

from datetime import timedelta

import functions_framework
from flask import Request, Response
from sqlmodel import Session

from duetide import entry, events, outbox
from duetide import sweep as sweeper
from duetide.config import get_settings
from duetide.models import utcnow
from duetide.sink import Incoming, cloudevent_sink

entry.start("sweep")


def on_ping(_session: Session | None, _event: Incoming) -> list[str]:
    settings = get_settings()
    now = utcnow()
    sweeper.sweep(
        now, timedelta(seconds=settings.duetide_reminder_grace_s), settings.duetide_sweep_batch
    )
    outbox.relay_pending(settings.duetide_sweep_batch)
    sweeper.purge_processed(now)
    return []


_sink = cloudevent_sink("sweep", on_ping, frozenset({events.PING}), dedupe=False)


@functions_framework.http
def sweep(request: Request) -> Response:
    return _sink(request)
