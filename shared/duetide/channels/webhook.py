"""The webhook channel: a signed JSON POST to the user's verified URL.

One attempt per call. The retry layer is the caller's: the KafkaSource redelivers a
`reminder.due` whose delivery failed transiently (with its backoff, then the dead-letter
topic), and notify sends again only on the channels not yet recorded. A loop here too
would hold the ordered partition for both budgets at once. `retryable` in the result
says whether another try can help: a connection error, a timeout, 429 or a 5xx.

Receivers verify a delivery with `verify_signature` (or the same steps in their own
language): read the `Duetide-Signature` header `t=<unix seconds>,v1=<hex>`, compute
HMAC-SHA256 with the shared secret over `f"{t}."` followed by the raw request body,
compare in constant time with any `v1` value, and refuse a `t` older than a few
minutes. The `Idempotency-Key` header is the same on every retry of one notification:
receivers deduplicate on it.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from duetide import events
from duetide.channels import netguard
from duetide.channels.delivery import DeliveryResult, clip, refused
from duetide.config import get_settings
from duetide.deadline import Deadline
from duetide.storage.models import Preference

NEEDS_NETWORK = True
LONGEST_S = 5.0

SIGNATURE_HEADER = "Duetide-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = "duetide-webhook/1"
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def send(due: events.ReminderEvent, pref: Preference) -> DeliveryResult:
    """The reminder to the user's webhook, once it is verified."""
    if not pref.webhook_url or not pref.webhook_secret:
        return refused("no webhook URL is set")
    if pref.webhook_verified_at is None:
        return refused("webhook not verified")
    settings = get_settings()
    return deliver_webhook(
        pref.webhook_url,
        {
            "type": events.REMINDER_DUE,
            "reminder_id": due.reminder_id,
            "task_id": due.task_id,
            "title": due.title,
            "due_at": due.due_at.isoformat() if due.due_at else None,
            "scheduled_at": due.scheduled_at.isoformat(),
        },
        secret=pref.webhook_secret.encode(),
        idempotency_key=f"{due.reminder_id}:{due.scheduled_at.isoformat()}",
        allow_loopback=settings.duetide_allow_loopback_webhooks,
        hosts=settings.webhook_hosts,
        timeout_s=LONGEST_S,
    )


def check_url(url: str) -> str:
    """The URL, if a delivery may go there by the SSRF rules it will be sent under (the
    same loopback setting and host allowance); `netguard` errors otherwise."""
    settings = get_settings()
    netguard.check_url(
        url, allow_loopback=settings.duetide_allow_loopback_webhooks, hosts=settings.webhook_hosts
    )
    return url


# --- signatures -------------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes, bound: Sequence[str] = ()) -> str:
    """The `Duetide-Signature` header value: `t=<timestamp>,v1=<hex HMAC-SHA256>`.

    The MAC covers `f"{timestamp}."`, then each of `bound` followed by `.`, then the
    body. A reminder binds nothing; a subscription's CloudEvent binds its `ce-id` and
    `ce-type`, which binary mode carries in headers, so a captured body cannot be
    replayed as another event."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body, bound)}"


def verify_signature(
    secret: str | bytes,
    header: str | None,
    body: bytes,
    now: float,
    tolerance_s: float = 300,
    bound: Sequence[str] = (),
) -> bool:
    """True when `header` signs `body` (and `bound`, as `sign` does) with `secret` and its
    time is within `tolerance_s` of `now` (unix seconds). Several `v1=` values (a secret
    rotation) are accepted. `secret` as the API gave it (`whsec_...`), or its UTF-8."""
    timestamp, candidates = _parse_signature(header or "")
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance_s:
        return False
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    expected = _mac(key, timestamp, body, bound).encode("ascii")
    matches = [hmac.compare_digest(expected, c.encode("utf-8", "replace")) for c in candidates]
    return any(matches)


def _mac(secret: bytes, timestamp: int, body: bytes, bound: Sequence[str] = ()) -> str:
    signed = "".join(f"{part}." for part in (str(timestamp), *bound)).encode("utf-8")
    return hmac.new(secret, signed + body, hashlib.sha256).hexdigest()


def _parse_signature(header: str) -> tuple[int | None, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        # ASCII digits: `str.isdigit` takes `²`, which `int` refuses (a receiver's 500).
        if key == "t" and re.fullmatch(r"[0-9]{1,15}", value) and timestamp is None:
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value)
    return timestamp, candidates


# --- the POST ---------------------------------------------------------------------------


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) to the checked address; Host, SNI and certificate name are the URL's host."""

    def __init__(
        self,
        target: netguard.Target,
        timeout: float,
        context: ssl.SSLContext | None,
        deadline: Deadline,
    ):
        super().__init__(target.address, target.port, timeout=timeout)
        self._target = target
        self._context = context
        self._deadline = deadline

    def connect(self) -> None:
        sock = socket.create_connection((self._target.address, self._target.port), self.timeout)
        self._deadline.watch(sock)
        if self._context is None:
            self.sock = sock
            return
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self._target.host)
        except BaseException:
            sock.close()
            raise


@dataclass(frozen=True)
class _Limits:
    timeout_s: float
    max_response_bytes: int
    capture_bytes: int


def deliver_webhook(url: str, payload: dict[str, Any], **options: Any) -> DeliveryResult:
    """POST `payload` as signed JSON, once: `post_signed` with its options."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return post_signed(url, body.encode("utf-8"), **options)


def post_signed(
    url: str,
    data: bytes,
    *,
    secret: bytes,
    idempotency_key: str,
    headers: Mapping[str, str] | None = None,
    bound: Sequence[str] = (),
    also_signed_by: Sequence[bytes] = (),
    allow_loopback: bool = False,
    hosts: Sequence[str] = (),
    timeout_s: float = LONGEST_S,
    max_response_bytes: int = 64 * 1024,
    capture_bytes: int = 0,
    now: Callable[[], float] = time.time,
    resolver: netguard.Resolver = socket.getaddrinfo,
    ssl_context: ssl.SSLContext | None = None,
) -> DeliveryResult:
    """POST `data` (JSON) with `headers` (a binary-mode CloudEvent's `ce-*`), signed over
    `bound` and the body (one `v1=` by `secret`, one more by each of `also_signed_by`:
    the secret a rotation replaced), once: the one webhook client of duetide.

    The URL is checked with netguard (the SSRF rules) and the connection goes to the
    address it checked; redirects are not followed; at most `max_response_bytes` of
    the answer are read, of which the first `capture_bytes` are returned. Connection
    errors, timeouts, a failed lookup, 429 and 5xx are `retryable`; other 4xx and 3xx
    answers, an unsafe destination, a name that does not exist and a certificate
    failure are final.
    """
    if not secret:
        raise ValueError("webhook secret must not be empty")
    if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise ValueError("idempotency key must be 1-255 printable ASCII characters")
    started = time.monotonic()  # the look-up is part of the exchange `timeout_s` bounds
    try:
        target = netguard.check_url(
            url, allow_loopback=allow_loopback, hosts=hosts, resolver=resolver, timeout_s=timeout_s
        )
    except netguard.UnsafeDestination as exc:
        return refused(str(exc))
    except netguard.ResolutionFailed as exc:
        # A name that does not exist is the user's to fix; a failing resolver is not.
        return refused(str(exc), retryable=not exc.permanent)
    timestamp = int(now())
    sent = {
        **(headers or {}),
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(secret, timestamp, data, bound)
        + "".join(f",v1={_mac(other, timestamp, data, bound)}" for other in also_signed_by),
        IDEMPOTENCY_HEADER: idempotency_key,
        "Connection": "close",
    }
    left = timeout_s - (time.monotonic() - started)
    limits = _Limits(max(left, 0.001), max_response_bytes, capture_bytes)
    return _post(target, sent, data, limits, ssl_context)


def _post(
    target: netguard.Target,
    headers: dict[str, str],
    data: bytes,
    limits: _Limits,
    ssl_context: ssl.SSLContext | None,
) -> DeliveryResult:
    context = None
    if target.scheme == "https":
        context = ssl_context or ssl.create_default_context()
    deadline = Deadline(limits.timeout_s)
    connection = _PinnedConnection(target, limits.timeout_s, context, deadline)
    try:
        connection.request("POST", target.request_target, body=data, headers=headers)
        response = connection.getresponse()
        if deadline.expired:  # its hang-up ended the headers: http.client takes the rest as read
            raise TimeoutError
        kept = _read_capped(response, limits.max_response_bytes, limits.capture_bytes)
        return _classify(response.status, kept)
    except ssl.SSLCertVerificationError:
        return DeliveryResult(False, error="TLS certificate verification failed")
    except (ValueError, http.client.InvalidURL):  # http.client's checks of what is sent
        return DeliveryResult(False, error="the request could not be written as HTTP")
    except (OSError, http.client.HTTPException) as exc:
        error = "timed out" if deadline.expired else _describe(exc)
        return DeliveryResult(False, error=error, retryable=True)
    finally:
        deadline.end()
        connection.close()


def _read_capped(response: http.client.HTTPResponse, limit: int, keep: int) -> bytes:
    """Read at most `limit` bytes of the answer, or what came before the deadline hung
    up (the status decides the outcome, the body is only kept); return the first `keep`
    of them and drop the rest."""
    seen = 0
    kept = bytearray()
    while seen < limit:
        try:
            chunk = response.read1(min(8192, limit - seen))
        except (OSError, http.client.HTTPException):
            break
        if not chunk:
            break
        seen += len(chunk)
        if len(kept) < keep:
            kept += chunk[: keep - len(kept)]
    return bytes(kept)


def _classify(status: int, body: bytes) -> DeliveryResult:
    if 200 <= status < 300:
        return DeliveryResult(True, status, body=body)
    if status == 429 or status >= 500:
        return DeliveryResult(False, status, f"HTTP {status}", retryable=True)
    if 300 <= status < 400:
        return DeliveryResult(False, status, f"HTTP {status}: redirect not followed")
    return DeliveryResult(False, status, f"HTTP {status}")


def _describe(exc: BaseException) -> str:
    """An error text without server-controlled content (HTTPException carries raw lines)."""
    if isinstance(exc, http.client.HTTPException):
        return clip(f"bad HTTP response: {type(exc).__name__}")
    if isinstance(exc, TimeoutError):
        return "timed out"
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return clip(f"{type(exc).__name__}: {detail}")
