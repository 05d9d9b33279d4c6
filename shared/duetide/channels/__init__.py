"""Where a reminder can go: one module per channel, and the registry that names them.

A channel module provides what `Sender` describes: `send(due, pref)`, which delivers one
`reminder.due` to the target the user's `Preference` holds for it and reports a
`DeliveryResult` (a `ValueError` for content the channel cannot send), and
`NEEDS_NETWORK`, which tells notify whether the delivery may wait on the wire (then it
runs outside any transaction and is recorded in its own) or not (the log channel: it
cannot fail, and is recorded as delivered in the transaction that checks the event),
and `LONGEST_S`, the bound of one delivery's whole exchange (notify starts one only
when it can end inside the request).

To add a channel: its module here, its entry in `REGISTRY`, its name in
`vocabulary.Channel`, and its target column on `Preference` (with a migration and its
check in `services/preferences.py`, done with the module's own validator).
`tests/unit/test_layout.py` holds the registry and the vocabulary together.

`netguard` (the SSRF rules for outgoing HTTP) and `verification` (proving a target
reaches its owner before anything else is sent there) serve the channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from duetide import events
from duetide.channels import email, log, webhook
from duetide.channels.delivery import DeliveryResult
from duetide.storage.models import Preference
from duetide.vocabulary import Channel


class Sender(Protocol):
    """What a channel module provides (a module satisfies it, as mypy checks below)."""

    NEEDS_NETWORK: bool
    LONGEST_S: float  # the most one delivery may take, its whole exchange

    def send(self, due: events.ReminderEvent, pref: Preference) -> DeliveryResult: ...


REGISTRY: Mapping[Channel, Sender] = {"log": log, "webhook": webhook, "email": email}
