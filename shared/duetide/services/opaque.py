"""The one encoding of the tokens clients pass back unread (page cursors, the activity
feed's `since`): compact JSON in unpadded URL-safe base64, so a token fits a query string
as it is. What a token holds is checked by its reader; `load` only undoes `dump`."""

from __future__ import annotations

import base64
import json
from typing import Any


def dump(value: Any) -> str:
    """UTF-8 as it is, not `\\u` escapes: an escape is six characters for a character's
    two to four bytes, and a cursor naming a title of 500 such characters came out longer
    than a cursor may be (an audit, 2026-12-07). `load` reads both."""
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def load(token: str) -> Any:
    """The JSON value of a token; ValueError (binascii.Error, JSONDecodeError and
    UnicodeDecodeError are ones) or RecursionError for anything `dump` did not make."""
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
