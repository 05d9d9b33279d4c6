"""Entity tags and the conditional requests they allow (RFC 9110 sections 8.8.3, 13).

The ETag of a task or a series is a hash of its JSON representation, the very text
GET answers with, so two clients holding the same tag saw the same thing (a task's
reminders too, a series' last occurrence). A change sent with `If-Match` is made only
if what it changes, read under its lock, still has that tag; else 412 and nothing
changes: two clients editing one task find out, where without it the later write
silently wins. A GET with `If-None-Match` answers 304 while it is unchanged. Nothing is
stored for this: the tag is computed from what is rendered, and a change that leaves
the representation as it was keeps its tag, as HTTP allows.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

from flask import Response
from pydantic import BaseModel
from werkzeug.datastructures import ETags
from werkzeug.http import quote_etag

from duetide.errors import PreconditionFailed
from duetide.web.http import json_response, payload


def entity_tag(body: BaseModel) -> str:
    """The strong entity tag of `body` as answered (unquoted): 128 bits of SHA-256."""
    digest = hashlib.sha256(payload(body).encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def etag_header(body: BaseModel) -> dict[str, str]:
    return {"ETag": quote_etag(entity_tag(body))}


def require_match(if_match: ETags, current: Callable[[], BaseModel]) -> None:
    """412 unless `If-Match` is absent, `*` (any version: the change itself finds out
    whether there is one), or names the tag of `current()`, which the caller has read
    under the lock its change takes. Strong comparison: a weak tag never matches, as
    the RFC asks of If-Match."""
    if not if_match or if_match.star_tag:
        return
    if not if_match.contains(entity_tag(current())):
        raise PreconditionFailed(
            "it has changed since the ETag in If-Match was read: read it again"
        )


def conditional_get(if_none_match: ETags, body: BaseModel) -> Response:
    """`body` with its ETag, or 304 and no body when `If-None-Match` names it (weak
    comparison, as the RFC asks of If-None-Match)."""
    tag = entity_tag(body)
    headers = {"ETag": quote_etag(tag)}
    if if_none_match.contains_weak(tag):
        return Response(status=304, headers=headers)
    return json_response(body, headers=headers)
