"""Delivery channels without storage: a signed webhook and an email through an SMTP relay.

Each returns a `DeliveryResult` for what happened on the wire; malformed input (a bad
address, a header value with CR/LF) raises `ValueError` before anything is sent.
`validate_address` is THE e-mail address check: preferences use it when an address is
stored and the email channel when it sends, so whatever was stored can be sent to.
`header_text` folds user text (a task title) into one header line. The log channel
lives in notify.py.

Webhook receivers verify a delivery with `verify_signature` (or the same steps in
their own language): read the `Duetide-Signature` header `t=<unix seconds>,v1=<hex>`,
compute HMAC-SHA256 with the shared secret over `f"{t}."` followed by the raw request
body, compare in constant time with any `v1` value, and refuse a `t` older than a few
minutes. The `Idempotency-Key` header is the same on every retry of one notification:
receivers deduplicate on it.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from typing import Any

from duetide.channels import netguard

SIGNATURE_HEADER = "Duetide-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = "duetide-webhook/1"
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
MAX_ERROR_CHARS = 200


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery did. `error` never holds secrets, URLs or response bodies;
    `retryable` says a later try may succeed (transient failure, attempts used up).
    `body` is the start of a webhook's answer, kept only when the caller asked for it
    (`capture_bytes`: the URL verification reads the echoed challenge)."""

    ok: bool
    status: int | None
    attempts: int
    error: str = ""
    retryable: bool = False
    body: bytes = field(default=b"", repr=False)


# --- signatures -------------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `Duetide-Signature` header value: `t=<timestamp>,v1=<hex HMAC-SHA256>`."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify_signature(
    secret: bytes, header: str | None, body: bytes, now: float, tolerance_s: float = 300
) -> bool:
    """True when `header` signs `body` with `secret` and its time is within `tolerance_s`
    of `now` (unix seconds). Several `v1=` values (a secret rotation) are accepted."""
    timestamp, candidates = _parse_signature(header or "")
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body).encode("ascii")
    matches = [hmac.compare_digest(expected, c.encode("utf-8", "replace")) for c in candidates]
    return any(matches)


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def _parse_signature(header: str) -> tuple[int | None, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit() and timestamp is None:
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value)
    return timestamp, candidates


# --- webhook ----------------------------------------------------------------------------


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) to the checked address; Host, SNI and certificate name are the URL's host."""

    def __init__(self, target: netguard.Target, timeout: float, context: ssl.SSLContext | None):
        super().__init__(target.address, target.port, timeout=timeout)
        self._target = target
        self._context = context

    def connect(self) -> None:
        sock = socket.create_connection((self._target.address, self._target.port), self.timeout)
        if self._context is None:
            self.sock = sock
            return
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self._target.host)
        except BaseException:
            sock.close()
            raise


@dataclass(frozen=True)
class _Outcome:
    status: int | None
    error: str
    retry: bool
    body: bytes = b""


def deliver_webhook(
    url: str,
    payload: dict[str, Any],
    *,
    secret: bytes,
    idempotency_key: str,
    allow_loopback: bool = False,
    hosts: Sequence[str] = (),
    attempts: int = 3,
    backoff_s: float = 0.5,
    timeout_s: float = 5.0,
    max_response_bytes: int = 64 * 1024,
    capture_bytes: int = 0,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    resolver: netguard.Resolver = socket.getaddrinfo,
    ssl_context: ssl.SSLContext | None = None,
) -> DeliveryResult:
    """POST `payload` as signed JSON; retry connection errors, timeouts, 429 and 5xx.

    Each attempt checks the URL with netguard (the SSRF rules) and connects to the
    address it checked; redirects are not followed; at most `max_response_bytes` of
    the answer are read, of which the first `capture_bytes` are returned. Backoff
    doubles from `backoff_s`. Other 4xx and 3xx answers, an unsafe destination, a name
    that does not exist and a certificate failure are final.
    """
    if not secret:
        raise ValueError("webhook secret must not be empty")
    if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise ValueError("idempotency key must be 1-255 printable ASCII characters")
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    data = body.encode("utf-8")
    outcome = _Outcome(None, "", retry=True)
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            sleep(backoff_s * 2 ** (attempt - 2))
        try:
            target = netguard.check_url(
                url, allow_loopback=allow_loopback, hosts=hosts, resolver=resolver
            )
        except netguard.UnsafeDestination as exc:
            return DeliveryResult(False, None, attempt - 1, _clip(str(exc)))
        except netguard.ResolutionFailed as exc:
            if exc.permanent:  # the user's host name does not exist: retrying cannot help
                return DeliveryResult(False, None, attempt - 1, _clip(str(exc)))
            outcome = _Outcome(None, _clip(str(exc)), retry=True)
            continue
        headers = _webhook_headers(target, secret, idempotency_key, int(now()), data)
        limits = (timeout_s, max_response_bytes, capture_bytes)
        outcome = _post_once(target, headers, data, limits, ssl_context)
        if outcome.status is not None and 200 <= outcome.status < 300:
            return DeliveryResult(True, outcome.status, attempt, body=outcome.body)
        if not outcome.retry:
            return DeliveryResult(False, outcome.status, attempt, outcome.error)
    return DeliveryResult(False, outcome.status, attempts, outcome.error, retryable=True)


def _webhook_headers(
    target: netguard.Target, secret: bytes, idempotency_key: str, timestamp: int, data: bytes
) -> dict[str, str]:
    return {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(secret, timestamp, data),
        IDEMPOTENCY_HEADER: idempotency_key,
        "Connection": "close",
    }


def _post_once(
    target: netguard.Target,
    headers: dict[str, str],
    data: bytes,
    limits: tuple[float, int, int],
    ssl_context: ssl.SSLContext | None,
) -> _Outcome:
    """One POST; `limits` is (timeout in seconds, bytes to read, bytes to keep)."""
    timeout_s, max_response_bytes, capture_bytes = limits
    context = None
    if target.scheme == "https":
        context = ssl_context or ssl.create_default_context()
    connection = _PinnedConnection(target, timeout_s, context)
    try:
        connection.request("POST", target.request_target, body=data, headers=headers)
        response = connection.getresponse()
        deadline = time.monotonic() + timeout_s
        kept = _read_capped(response, max_response_bytes, capture_bytes, deadline)
        outcome = _classify(response.status)
        return _Outcome(outcome.status, outcome.error, outcome.retry, kept)
    except ssl.SSLCertVerificationError:
        return _Outcome(None, "TLS certificate verification failed", retry=False)
    except (OSError, http.client.HTTPException) as exc:
        return _Outcome(None, _describe(exc), retry=True)
    finally:
        connection.close()


def _read_capped(
    response: http.client.HTTPResponse, limit: int, keep: int, deadline: float
) -> bytes:
    """Read at most `limit` bytes of the answer, stopping at `deadline`; return the
    first `keep` of them and drop the rest."""
    seen = 0
    kept = bytearray()
    while seen < limit and time.monotonic() < deadline:
        chunk = response.read1(min(8192, limit - seen))
        if not chunk:
            break
        seen += len(chunk)
        if len(kept) < keep:
            kept += chunk[: keep - len(kept)]
    return bytes(kept)


def _classify(status: int) -> _Outcome:
    if 200 <= status < 300:
        return _Outcome(status, "", retry=False)
    if status == 429 or status >= 500:
        return _Outcome(status, f"HTTP {status}", retry=True)
    if 300 <= status < 400:
        return _Outcome(status, f"HTTP {status}: redirect not followed", retry=False)
    return _Outcome(status, f"HTTP {status}", retry=False)


def _describe(exc: BaseException) -> str:
    """An error text without server-controlled content (HTTPException carries raw lines)."""
    if isinstance(exc, http.client.HTTPException):
        return _clip(f"bad HTTP response: {type(exc).__name__}")
    if isinstance(exc, TimeoutError):
        return "timed out"
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return _clip(f"{type(exc).__name__}: {detail}")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


# --- email ------------------------------------------------------------------------------


# An ASCII dot-atom local part and a host name of letters, digits and hyphens: what every
# relay takes without the SMTPUTF8 extension (smtplib refuses non-ASCII addresses on a
# relay that lacks it, a failure no retry would fix). Quoted local parts and address
# literals are not accepted.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
ADDRESS = re.compile(rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>{_LABEL}(?:\.{_LABEL})*)")


def validate_address(value: str) -> str:
    """The bare address of one mailbox (`a@b.example` or `Name <a@b.example>`); ValueError
    otherwise. The one address check of duetide: preferences store only what passes it,
    and the email channel sends only to what passes it. Messages never repeat the value."""
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
    return address


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
    """Send one plain-text message through the configured SMTP relay.

    Credentials are only sent after STARTTLS. A 4xx reply or a broken connection is
    `retryable`; a 5xx reply is final.
    """
    sender_address = validate_address(sender)
    to_address = validate_address(to)
    _no_line_breaks("subject", subject)
    if username is not None and not starttls:
        raise ValueError("SMTP credentials are only sent after STARTTLS")
    message = _email_message(sender, to, subject, body, sender_address)
    try:
        with smtplib.SMTP(host, port, timeout=timeout_s) as smtp:
            if starttls:
                smtp.starttls(context=ssl_context or ssl.create_default_context())
            if username is not None:
                smtp.login(username, password or "")
            smtp.send_message(message, from_addr=sender_address, to_addrs=[to_address])
    except smtplib.SMTPRecipientsRefused as exc:
        code = next(iter(exc.recipients.values()))[0]
        return DeliveryResult(False, code, 1, f"SMTP {code}: recipient refused", code < 500)
    except smtplib.SMTPResponseException as exc:
        error = f"SMTP {exc.smtp_code}: {type(exc).__name__}"
        return DeliveryResult(False, exc.smtp_code, 1, error, exc.smtp_code < 500)
    except (smtplib.SMTPException, OSError) as exc:
        return DeliveryResult(False, None, 1, _clip(f"SMTP: {type(exc).__name__}"), True)
    return DeliveryResult(True, 250, 1)


def _email_message(
    sender: str, to: str, subject: str, body: str, sender_address: str
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    # The sender's domain, not socket.getfqdn(): that can block on a DNS lookup.
    message["Message-ID"] = make_msgid(domain=sender_address.rpartition("@")[2])
    message.set_content(body)
    return message


def _no_line_breaks(what: str, value: str) -> None:
    if not isinstance(value, str) or any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"{what} must not contain CR, LF or NUL characters")
