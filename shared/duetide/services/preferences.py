"""A user's reminder preferences: zone, default reminders, channels, quiet hours, grace,
and the notification targets (e-mail address, webhook URL) with their verification.

Targets are checked with the same functions the channels use when they send
(`email.validate_address`, `webhook.check_url` with the same SSRF settings), so
nothing is stored that the channel would then refuse.
"""

from __future__ import annotations

import secrets
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import bindparam
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, select

from duetide.channels import email, netguard, verification, webhook
from duetide.config import get_settings
from duetide.errors import Conflict, Unavailable, ValidationFailed
from duetide.rules import zones
from duetide.rules.durations import iso_duration
from duetide.rules.reminders import MIN_GRACE
from duetide.storage.models import Preference

if TYPE_CHECKING:
    from duetide.services.responses import PreferencesOut
    from duetide.services.schemas import PreferencesUpdate


def load(session: Session, owner: str) -> Preference:
    """The stored preferences, or the defaults (not stored until changed)."""
    return session.get(Preference, owner) or Preference(owner=owner)


def default_reminders(session: Session, owner: str) -> list[int]:
    """The user's default reminder offsets in seconds; the column alone, since every
    task created with a due time asks for it."""
    return list(session.connection().execute(_DEFAULT_REMINDERS, {"owner": owner}).scalar() or [])


_DEFAULT_REMINDERS = select(Preference.default_reminders).where(
    Preference.owner == bindparam("owner")
)


def locked(session: Session, owner: str) -> Preference:
    """The user's row, created with the defaults if missing, locked until the commit.

    Changes that keep an invariant across requests (the confirmation budget, a target
    and its verification) go through here: `FOR UPDATE` on PostgreSQL, and on SQLite
    the write lock a writing `session_scope()` takes at BEGIN. The insert of a missing
    row does nothing when a concurrent request inserted it first.
    """
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    defaults = Preference(owner=owner)
    session.execute(
        insert(Preference)
        .values(
            owner=owner,
            timezone=defaults.timezone,
            default_reminders=defaults.default_reminders,
            channels=defaults.channels,
            updated_at=defaults.updated_at,
            verification_sends={},
        )
        .on_conflict_do_nothing(index_elements=["owner"])
    )
    query = select(Preference).where(Preference.owner == owner).with_for_update()
    return session.exec(query.execution_options(populate_existing=True)).one()


class Timing(Protocol):
    """What the reminder rules read of a user's preferences: a `Preference`, or a row of
    those columns (the sweep reads them with its claim; NULLs are the defaults)."""

    @property
    def quiet_start(self) -> str | None: ...

    @property
    def quiet_end(self) -> str | None: ...

    @property
    def grace_s(self) -> int | None: ...


def grace(preference: Timing) -> timedelta:
    """The owner's grace, or the deployment's; never under `MIN_GRACE` (a preference
    stored, or a deployment configured, before it was the least accepted: refusing the
    setting would stop every function of such a deployment at its upgrade)."""
    seconds = preference.grace_s
    if seconds is None:
        seconds = get_settings().duetide_reminder_grace_s
    return max(timedelta(seconds=seconds), MIN_GRACE)


def quiet_window(preference: Timing) -> tuple[time, time] | None:
    if not preference.quiet_start or not preference.quiet_end:
        return None
    return time.fromisoformat(preference.quiet_start), time.fromisoformat(preference.quiet_end)


def preference_out(preference: Preference) -> PreferencesOut:
    # Here, not at the top: sweep and notify use this module but no API model (cold start).
    from duetide.services.responses import PreferencesOut, QuietHoursOut, rfc3339

    return PreferencesOut(
        timezone=preference.timezone,
        default_reminders=[iso_duration(s) for s in preference.default_reminders],
        channels=preference.channels,
        webhook_url=preference.webhook_url,
        # The user's own signing key, to verify Duetide-Signature on their receiver.
        webhook_secret=preference.webhook_secret,
        email=preference.email,
        # Nothing but a confirmation is sent to an unverified address or URL.
        email_verified=bool(preference.email and preference.email_verified_at),
        email_confirmation_sent_at=rfc3339(preference.email_code_sent_at)
        if preference.email
        else None,
        webhook_verified=bool(preference.webhook_url and preference.webhook_verified_at),
        quiet_hours=QuietHoursOut(start=preference.quiet_start, end=preference.quiet_end)
        if preference.quiet_start and preference.quiet_end
        else None,
        grace=iso_duration(int(grace(preference).total_seconds())),
        updated_at=rfc3339(preference.updated_at),
    )


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed.of(field, message)


def validated(spec: PreferencesUpdate) -> PreferencesUpdate:
    """`spec` with its targets checked and normalised (the bare e-mail address): 422 for
    what a channel would refuse. Before any transaction: the URL check resolves a name."""
    checked: dict[str, Any] = {}
    if "webhook_url" in spec.model_fields_set:
        checked["webhook_url"] = checked_webhook(spec.webhook_url)
    if "email" in spec.model_fields_set:
        checked["email"] = _checked_email(spec.email)
    return spec.model_copy(update=checked)


def update(
    session: Session, owner: str, spec: PreferencesUpdate, now: datetime
) -> tuple[Preference, list[verification.Outgoing]]:
    """Apply a `validated` change to the locked row; a new e-mail address or webhook URL
    starts unverified and yields the confirmation to send once this commits."""
    preference = locked(session, owner)
    changes = spec.model_fields_set
    outgoing: list[verification.Outgoing] = []
    settings = get_settings()
    if "timezone" in changes:
        if not zones.is_iana(spec.timezone or "UTC"):
            raise _invalid("timezone", f"unknown IANA time zone {spec.timezone!r}")
        preference.timezone = spec.timezone or "UTC"
    if "default_reminders" in changes:
        offsets = spec.default_reminders or []
        preference.default_reminders = sorted({int(o.total_seconds()) for o in offsets})
    if "webhook_url" in changes and spec.webhook_url != preference.webhook_url:
        preference.webhook_url = spec.webhook_url
        preference.webhook_verified_at = None
        if preference.webhook_url:
            if not preference.webhook_secret:
                preference.webhook_secret = secrets.token_urlsafe(32)
            outgoing.append(verification.start_webhook(preference, now, settings))
    if "email" in changes and spec.email != preference.email:
        preference.email = spec.email
        verification.forget_email(preference)
        if preference.email:
            outgoing.append(verification.start_email(preference, now, settings))
    if "channels" in changes:
        preference.channels = list(dict.fromkeys(spec.channels or ["log"]))
    if "quiet_hours" in changes:
        window = spec.quiet_hours
        if window is not None and window.start == window.end:
            window = None  # no quiet hours, as null is (README): shown back as null
        preference.quiet_start = window.start if window else None
        preference.quiet_end = window.end if window else None
    if "grace" in changes:
        preference.grace_s = int(spec.grace.total_seconds()) if spec.grace is not None else None
    if "webhook" in preference.channels and not preference.webhook_url:
        raise _invalid("channels", "the webhook channel needs webhook_url")
    if "email" in preference.channels and not preference.email:
        raise _invalid("channels", "the email channel needs email")
    preference.updated_at = now
    session.add(preference)
    return preference, outgoing


def verify_email(session: Session, owner: str, code: str, now: datetime) -> Preference:
    preference = locked(session, owner)
    verification.confirm_email(preference, code, now)
    session.add(preference)
    return preference


def resend_email(
    session: Session, owner: str, now: datetime
) -> tuple[Preference, verification.EmailConfirmation]:
    settings = get_settings()
    if not settings.duetide_smtp_host:
        raise Conflict("e-mail is not configured on this server")
    preference = locked(session, owner)
    if preference.email and preference.email_verified_at is not None:
        raise Conflict("the e-mail address is already verified")
    confirmation = verification.start_email(preference, now, settings)
    session.add(preference)
    return preference, confirmation


def challenge_webhook(
    session: Session, owner: str, now: datetime
) -> tuple[Preference, verification.WebhookChallenge | None]:
    """A new challenge for the stored URL; none when it is verified already."""
    preference = locked(session, owner)
    if preference.webhook_url and preference.webhook_verified_at is not None:
        return preference, None
    challenge = verification.start_webhook(preference, now, get_settings())
    session.add(preference)
    return preference, challenge


def checked_webhook(url: str | None, field: str = "webhook_url") -> str | None:
    """The URL if the webhook client may send there (its SSRF rules, with the same
    settings), a 422 naming `field` otherwise; a 503 where its name could not be looked
    up for now (the resolver failing or slow is not the URL's fault). Before any
    transaction: it resolves."""
    if not url:
        return None
    try:
        return webhook.check_url(url)
    except netguard.ResolutionFailed as exc:
        if not exc.permanent:
            raise Unavailable(f"{field}: {exc}; retry", headers={"Retry-After": "5"}) from None
        raise _invalid(field, str(exc)) from None
    except netguard.UnsafeDestination as exc:
        raise _invalid(field, str(exc)) from None


def _checked_email(address: str | None) -> str | None:
    """The bare address, by the email channel's own check (one validator for both ends)."""
    if not address:
        return None
    try:
        return email.validate_address(address)
    except ValueError as exc:
        raise _invalid("email", str(exc)) from None
