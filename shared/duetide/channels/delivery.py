"""What one delivery did, as every channel reports it."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_ERROR_CHARS = 200


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery did. `error` never holds secrets, URLs, addresses or response
    bodies; `retryable` says a later try may succeed (a transient failure: the caller's
    retry layer, the KafkaSource's redelivery, tries again). `body` is the start of a
    webhook's answer, kept only when the caller asked for it (`capture_bytes`: the URL
    verification reads the echoed challenge)."""

    ok: bool
    status: int | None = None
    error: str = ""
    retryable: bool = False
    body: bytes = field(default=b"", repr=False)


DELIVERED = DeliveryResult(ok=True)


def refused(detail: str, *, retryable: bool = False) -> DeliveryResult:
    """Nothing was sent: the event, the user's settings or the configuration forbid it."""
    return DeliveryResult(ok=False, error=clip(detail), retryable=retryable)


def clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
