"""A user's reminder preferences: zone, default reminders, channels, quiet hours, grace."""

from __future__ import annotations

import secrets
from datetime import time, timedelta
from email.utils import parseaddr
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session

from duetide import netguard
from duetide.config import get_settings
from duetide.errors import ValidationFailed
from duetide.models import Preference, utcnow
from duetide.schemas import PreferencesUpdate


def load(session: Session, owner: str) -> Preference:
    """The stored preferences, or the defaults (not stored until changed)."""
    return session.get(Preference, owner) or Preference(owner=owner)


def grace(preference: Preference) -> timedelta:
    if preference.grace_s is not None:
        return timedelta(seconds=preference.grace_s)
    return timedelta(seconds=get_settings().duetide_reminder_grace_s)


def quiet_window(preference: Preference) -> tuple[time, time] | None:
    if not preference.quiet_start or not preference.quiet_end:
        return None
    return time.fromisoformat(preference.quiet_start), time.fromisoformat(preference.quiet_end)


def preference_out(preference: Preference) -> dict[str, Any]:
    window = quiet_window(preference)
    return {
        "timezone": preference.timezone,
        "default_reminders": [f"PT{s}S" for s in preference.default_reminders],
        "channels": preference.channels,
        "webhook_url": preference.webhook_url,
        # The user's own signing key, to verify Duetide-Signature on their receiver.
        "webhook_secret": preference.webhook_secret,
        "email": preference.email,
        "quiet_hours": {"start": preference.quiet_start, "end": preference.quiet_end}
        if window
        else None,
        "grace": f"PT{int(grace(preference).total_seconds())}S",
        "updated_at": preference.updated_at.isoformat(),
    }


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"invalid value for {field}: {message}",
                            details=[{"field": field, "message": message}])  # fmt: skip


def update(session: Session, owner: str, spec: PreferencesUpdate) -> Preference:
    preference = load(session, owner)
    changes = spec.model_fields_set
    if "timezone" in changes:
        try:
            ZoneInfo(spec.timezone or "UTC")
        except (ValueError, KeyError, OSError):
            raise _invalid("timezone", f"unknown IANA time zone {spec.timezone!r}") from None
        preference.timezone = spec.timezone or "UTC"
    if "default_reminders" in changes:
        offsets = spec.default_reminders or []
        preference.default_reminders = sorted({int(o.total_seconds()) for o in offsets})
    if "webhook_url" in changes:
        preference.webhook_url = _checked_webhook(spec.webhook_url)
        if preference.webhook_url and not preference.webhook_secret:
            preference.webhook_secret = secrets.token_urlsafe(32)
    if "email" in changes:
        preference.email = _checked_email(spec.email)
    if "channels" in changes:
        preference.channels = list(dict.fromkeys(spec.channels or ["log"]))
    if "quiet_hours" in changes:
        window = spec.quiet_hours
        preference.quiet_start = window.start if window else None
        preference.quiet_end = window.end if window else None
    if "grace" in changes:
        preference.grace_s = int(spec.grace.total_seconds()) if spec.grace is not None else None
    if "webhook" in preference.channels and not preference.webhook_url:
        raise _invalid("channels", "the webhook channel needs webhook_url")
    if "email" in preference.channels and not preference.email:
        raise _invalid("channels", "the email channel needs email")
    preference.updated_at = utcnow()
    session.add(preference)
    return preference


def _checked_webhook(url: str | None) -> str | None:
    if not url:
        return None
    try:
        netguard.check_url(url, allow_loopback=get_settings().duetide_allow_loopback_webhooks)
    except (netguard.UnsafeDestination, netguard.ResolutionFailed) as exc:
        raise _invalid("webhook_url", str(exc)) from None
    return url


def _checked_email(address: str | None) -> str | None:
    if not address:
        return None
    _, parsed = parseaddr(address)
    if parsed != address.strip() or "@" not in parsed or any(c in address for c in "\r\n"):
        raise _invalid("email", "not a plain e-mail address")
    return parsed
