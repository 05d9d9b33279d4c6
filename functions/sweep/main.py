"""sweep: on each ping, claim due reminders and due webhook retries once, and relay
unsent outbox rows."""

import functions_framework
from flask import Request, Response

from duetide import events, telemetry
from duetide.config import get_settings
from duetide.services import webhook_deliveries
from duetide.services.sweep import claim_due, purge_processed
from duetide.storage import outbox, topics
from duetide.storage.models import utcnow
from duetide.web import entry
from duetide.web.sink import Incoming, event_endpoint

entry.start("sweep")


def on_ping(_event: Incoming) -> str:
    """Idempotent by its own claims, so a ping needs no event-id record."""
    settings = get_settings()
    now = utcnow()
    claim_due(now, settings.duetide_sweep_batch)
    webhook_deliveries.claim_retries(now, settings.duetide_sweep_batch)
    outbox.relay_pending(settings.duetide_sweep_batch)
    if telemetry.enabled():  # one more query and one look at Kafka, only for the gauges
        telemetry.record_backlog(*outbox.backlog(utcnow()))
        held = topics.dead_letters_held(settings.duetide_publish_timeout_s)
        if held is not None:
            telemetry.record_dead_letters(held)
    purge_processed(now)
    return "processed"


_endpoint = event_endpoint(frozenset({events.PING}), on_ping)


@functions_framework.http
def sweep(request: Request) -> Response:
    return _endpoint(request)
