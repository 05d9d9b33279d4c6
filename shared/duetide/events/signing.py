"""Signed commands: a producing system vouches for the user a command acts for.

A command produced onto the commands topic cannot carry an HTTP header, and a user's
bearer token must not ride in it (it would sit in Kafka, readable and expiring). So a
registered system signs what it asks for: HMAC-SHA256 with its key over the canonical
JSON (RFC 8785, JCS) of

    {"data": <data>, "duetidesystem": <system>, "duetideuser": <user>,
     "id": <id>, "source": <source>, "type": <type>}

sent as three extension attributes: `duetideuser` (the user acted for),
`duetidesystem` (the registered name) and `duetidesig` (the MAC, lowercase hex). A
reader of the topic can replay a signed command (which then is a duplicate) but can
neither alter it nor sign another. Python producers call `sign_command`; others build
the same bytes (any JCS library) and MAC them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from cloudevents.http import CloudEvent

USER = "duetideuser"
SYSTEM = "duetidesystem"
SIGNATURE = "duetidesig"
MAX_SAFE_INTEGER = 2**53 - 1
"""JCS writes numbers as IEEE doubles; larger integers would not survive other producers."""


def canonical_json(value: Any) -> bytes:
    """RFC 8785 for what command data holds: objects, arrays, strings, integers within
    ±(2**53 - 1), booleans and null. Other numbers are a ValueError: their JCS form needs
    ECMAScript's number formatting, and no command field is a fraction."""
    return _canonical(value).encode()


def _canonical(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError("an integer beyond 2**53 - 1 cannot be signed")
        return str(value)
    if isinstance(value, str):
        # json.dumps escapes exactly as JCS: \" \\ \b \f \n \r \t, other controls \u00xx
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(_canonical(item) for item in value) + "]"
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError("object keys must be strings")
        keys = sorted(value, key=lambda key: key.encode("utf-16-be"))  # JCS: UTF-16 order
        return "{" + ",".join(f"{_canonical(k)}:{_canonical(value[k])}" for k in keys) + "}"
    raise ValueError(f"a {type(value).__name__} cannot be signed")


def signed_content(
    *, event_id: str, source: str, type: str, user: str, system: str, data: Any
) -> bytes:
    return canonical_json(
        {"data": data, SYSTEM: system, USER: user, "id": event_id, "source": source, "type": type}
    )


def signature(key: str, content: bytes) -> str:
    return hmac.new(key.encode(), content, hashlib.sha256).hexdigest()


def sign_command(event: CloudEvent, *, user: str, system: str, key: str) -> CloudEvent:
    """Set `event`'s user, system and signature attributes (in place; returned)."""
    content = signed_content(
        event_id=event["id"],
        source=event["source"],
        type=event["type"],
        user=user,
        system=system,
        data=event.get_data(),
    )
    event[USER] = user
    event[SYSTEM] = system
    event[SIGNATURE] = signature(key, content)
    return event


def verifies(keys: tuple[str, ...], content: bytes, claimed: str) -> bool:
    """Whether `claimed` is the MAC of `content` under one of `keys` (constant time each)."""
    found = False
    for key in keys:  # every key is tried, so the time does not tell which one matched
        found |= hmac.compare_digest(signature(key, content), claimed)
    return found
