"""The email channel: one plain-text message through the configured SMTP relay.

`validate_address` is THE e-mail address check: preferences store only what passes it
and this channel sends only to what passes it, so whatever was stored can be sent to.
`header_text` folds user text (a task title) into one header line. Malformed input (a
bad address, a header value with CR/LF) raises `ValueError` before anything is sent.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
import ssl
import zoneinfo
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr

from duetide import events
from duetide.channels.delivery import DeliveryResult, clip, refused
from duetide.config import get_settings
from duetide.deadline import Deadline
from duetide.rules import zones
from duetide.storage.models import Preference

NEEDS_NETWORK = True
LONGEST_S = 10.0
SUBJECT_CHARS = 200


def send(due: events.ReminderEvent, pref: Preference) -> DeliveryResult:
    """The reminder to the user's verified address. A title is the user's content: it is
    folded into one subject line, never a reason to fail."""
    settings = get_settings()
    if not settings.duetide_smtp_host:
        return refused("email channel is not configured")
    if not pref.email:
        return refused("no email address is set")
    try:
        address = validate_address(pref.email)
    except ValueError:
        return refused("email address is not valid")
    if pref.email_verified_at is None:
        return refused("email not verified")
    return mail(
        to=address,
        subject=header_text(f"Reminder: {due.title}", SUBJECT_CHARS),
        body=f"{due.title}\n\nDue: {due_text(due.due_at, pref.timezone)}\n",
    )


def due_text(due_at: datetime | None, zone: str) -> str:
    """The due time as its reader's clock shows it, in the zone of their preferences:
    the mail said `2026-12-08T09:00:00+00:00` to a user in Berlin, an hour off from
    what they had typed. The zone's name follows its abbreviation (CET is several
    places' name). A zone that is not IANA's (stored before that check) is UTC."""
    if due_at is None:
        return "no due time"
    if not zones.is_iana(zone):
        zone = "UTC"
    local = due_at.astimezone(zoneinfo.ZoneInfo(zone))
    return f"{local:%a %d %b %Y, %H:%M} {local.tzname()} ({zone})"


def mail(*, to: str, subject: str, body: str, timeout_s: float = LONGEST_S) -> DeliveryResult:
    """`deliver_email` through the relay the settings name."""
    settings = get_settings()
    return deliver_email(
        host=settings.duetide_smtp_host,
        port=settings.duetide_smtp_port,
        sender=settings.duetide_smtp_sender,
        to=to,
        subject=subject,
        body=body,
        starttls=settings.duetide_smtp_starttls,
        username=settings.duetide_smtp_username or None,
        password=settings.duetide_smtp_password or None,
        timeout_s=timeout_s,
    )


# An ASCII dot-atom local part and a host name of letters, digits and hyphens: what every
# relay takes without the SMTPUTF8 extension (smtplib refuses non-ASCII addresses on a
# relay that lacks it, a failure no retry would fix). Quoted local parts and address
# literals are not accepted.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
ADDRESS = re.compile(rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>{_LABEL}(?:\.{_LABEL})*)")


def validate_address(value: str) -> str:
    """The bare address of one mailbox (`a@b.example` or `Name <a@b.example>`), its domain
    in lower case (domains ignore case, RFC 5321 2.4: `a@B.example` is the same mailbox,
    not a new address to verify again); ValueError otherwise. Messages never repeat the
    value."""
    _no_line_breaks("address", value)
    mailboxes = getaddresses([value])
    _name, address = parseaddr(value)
    if len(mailboxes) != 1 or mailboxes[0][1] != address:
        raise ValueError("address must name exactly one mailbox")
    match = ADDRESS.fullmatch(address)
    if match is None:
        raise ValueError("address must look like name@domain, in ASCII without quotes")
    if len(match["local"]) > 64:
        raise ValueError("the part before @ is longer than 64 characters")
    if len(address) > 254:
        raise ValueError("address is longer than 254 characters")
    return f"{match['local']}@{match['domain'].lower()}"


# Line breaks and other control characters a header line must not hold; str.split()
# already folds CR, LF, VT, FF, the separators 0x1c-0x1f, NEL and U+2028/U+2029.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")


def header_text(value: str, limit: int) -> str:
    """`value` as one header line of at most `limit` characters: every run of line breaks,
    control characters and white space becomes one space; lone surrogates (which no
    encoding can send) become U+FFFD. User text (a task title) is folded, not refused:
    it is the user's content and should still be delivered."""
    text = _SURROGATES.sub("\ufffd", _CONTROLS.sub(" ", value))
    return " ".join(text.split())[:limit]


def deliver_email(
    *,
    host: str,
    port: int,
    sender: str,
    to: str,
    subject: str,
    body: str,
    starttls: bool,
    username: str | None = None,
    password: str | None = None,
    timeout_s: float = 10,
    ssl_context: ssl.SSLContext | None = None,
) -> DeliveryResult:
    """Send one plain-text message through an SMTP relay.

    Credentials are only sent after STARTTLS. A 4xx reply or a broken connection is
    `retryable`; a 5xx reply is final only where it is about this message: its recipient
    (RCPT, but for a 530, an authentication status or a relay refused there) or its content (DATA, a
    552 to MAIL FROM's SIZE). Before that (the greeting, EHLO, STARTTLS, AUTH, MAIL FROM
    with the configured sender) a refusal is the relay's or duetide's configuration,
    say a rotated password: recorded as final, every reminder until it was fixed was
    lost; retryable, they wait in dead letters for a replay. `timeout_s` bounds the
    whole exchange: smtplib's timeout bounds each read, and a relay sending its replies
    a byte at a time held one of notify's workers for as long as it went on.
    """
    _no_line_breaks("sender", sender)  # never sent on, whatever its source
    try:
        sender_address = validate_address(sender)
    except ValueError:  # the configuration's, not the reminder's: retried, as a login refused
        return DeliveryResult(False, None, "SMTP: the configured sender is not usable", True)
    to_address = validate_address(to)
    _no_line_breaks("subject", subject)
    if username is not None and not starttls:
        raise ValueError("SMTP credentials are only sent after STARTTLS")
    message = _email_message(sender, to, subject, body, sender_address)
    about_the_message = False  # the relay has taken the session: RCPT and DATA are next
    try:
        with Deadline(timeout_s) as deadline:
            smtp = _Watched(deadline, host, port, timeout_s)
            try:
                if starttls:
                    smtp.starttls(context=ssl_context or ssl.create_default_context())
                if username is not None:
                    _login(smtp, username, password or "")
                smtp.ehlo_or_helo_if_needed()  # sent by send_message otherwise: the session
                about_the_message = True
                smtp.send_message(message, from_addr=sender_address, to_addrs=[to_address])
                # Taken (250 to the message): whatever QUIT gets changes nothing. As a
                # context manager smtplib raised on a reply other than 221, and a relay
                # answering 421 there (restarting) got the message again from the retry,
                # a 5xx there recorded a delivered one failed (an audit, 2026-12-07).
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    smtp.quit()
            finally:
                smtp.close()
    except _Unencodable as exc:
        return DeliveryResult(False, None, str(exc), True)
    except smtplib.SMTPRecipientsRefused as exc:
        code, reply = next(iter(exc.recipients.values()))
        final = code >= 500 and not _not_authorised(code, reply)
        return DeliveryResult(False, code, f"SMTP {code}: recipient refused", not final)
    except smtplib.SMTPResponseException as exc:
        error = f"SMTP {exc.smtp_code}: {type(exc).__name__}"
        final = about_the_message and (
            not isinstance(exc, smtplib.SMTPSenderRefused) or exc.smtp_code == 552
        )  # a sender refused is the configured one, but 552 is the message's SIZE
        return DeliveryResult(False, exc.smtp_code, error, exc.smtp_code < 500 or not final)
    except (smtplib.SMTPException, OSError) as exc:
        cause = "timed out" if deadline.expired else type(exc).__name__
        return DeliveryResult(False, None, clip(f"SMTP: {cause}"), True)
    return DeliveryResult(True, 250)


class _Unencodable(Exception):
    """duetide's relay credentials cannot be sent (smtplib writes AUTH in ASCII)."""


def _login(smtp: smtplib.SMTP, username: str, password: str) -> None:
    """A UnicodeEncodeError of smtplib is a ValueError, which the channel takes for the
    reminder's content, failing every e-mail reminder for good; it is the configuration's,
    retried like a refused login (an audit, 2026-12-07; the settings refuse it too)."""
    try:
        smtp.login(username, password)
    except UnicodeError:
        raise _Unencodable("SMTP: the configured credentials are not ASCII") from None


def _not_authorised(code: int, reply: bytes) -> bool:
    """A refusal at RCPT that is about duetide's standing with the relay, not about the
    address: 530 (authentication required), an RFC 3463 status of authentication (5.7.0,
    5.7.8, 5.7.57) or "5.7.1 Relay access denied" (sent when the credentials are missing
    or wrong). Other 5.7.x refusals are the recipient's policy ("Access denied"): final."""
    text = reply.strip().lower()
    return (
        code == 530
        or text.startswith((b"5.7.0", b"5.7.8 ", b"5.7.57"))
        or (text.startswith(b"5.7.1") and b"relay" in text)
    )


class _Watched(smtplib.SMTP):
    """An SMTP connection whose socket `deadline` watches from its connect on, before the
    greeting is read (`_get_socket` is where smtplib's own SMTP_SSL and LMTP make theirs;
    typeshed does not list it)."""

    def __init__(self, deadline: Deadline, host: str, port: int, timeout_s: float) -> None:
        self._deadline = deadline
        super().__init__(host, port, timeout=timeout_s)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self._deadline.watch(sock)
        return sock


def _email_message(
    sender: str, to: str, subject: str, body: str, sender_address: str
) -> EmailMessage:
    message = EmailMessage()
    _set_text(message, "From", sender)
    _set_text(message, "To", to)
    _set_text(message, "Subject", subject)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    # The sender's domain, not socket.getfqdn(): that can block on a DNS lookup.
    message["Message-ID"] = make_msgid(domain=sender_address.rpartition("@")[2])
    # 7-bit clean: raw UTF-8 (the default for short lines) needs a relay that says
    # 8BITMIME, and one that did not refused every reminder whose title was not ASCII
    # (500, final; an audit, 2026-12-07).
    message.set_content(body, cte="quoted-printable")
    return message


def _set_text(message: EmailMessage, name: str, value: str) -> None:
    """Set a header to `value` as text. The email package decodes RFC 2047 encoded words
    in a value it is given, and before Python 3.11.10 (CVE-2024-6923) wrote a CR LF
    decoded from one as it was: a title (or a display name) could add headers or end
    them. Where the value read back differs, a zero-width space after each `=?` keeps
    them text, as they were meant."""
    message[name] = value
    if "=?" in value and str(message[name]) != value:
        del message[name]
        message[name] = value.replace("=?", "=\u200b?")


def _no_line_breaks(what: str, value: str) -> None:
    if not isinstance(value, str) or any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"{what} must not contain CR, LF or NUL characters")
