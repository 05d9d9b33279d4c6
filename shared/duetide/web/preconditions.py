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
import re
from collections.abc import Callable

from flask import Request, Response
from pydantic import BaseModel
from werkzeug.http import parse_etags, quote_etag

from duetide.errors import BadRequest, PreconditionFailed
from duetide.web.http import json_text_response, payload


def entity_tag(body: BaseModel) -> str:
    """The strong entity tag of `body` as answered (unquoted): 128 bits of SHA-256."""
    return _tag_of(payload(body))


def _tag_of(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def tagged_response(
    body: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """`body` with its ETag, rendered once for both."""
    text = payload(body)
    return json_text_response(text, status, {**(headers or {}), "ETag": quote_etag(_tag_of(text))})


_ENTITY_TAG = r'(?:W/)?"[\x21\x23-\x7e]*"'
IF_MATCH_PATTERN = rf"^ *(?:\*|{_ENTITY_TAG}(?: *, *{_ENTITY_TAG})*) *$"
"""RFC 9110's `If-Match = "*" / #entity-tag`, tags of visible ASCII (ours are base64url;
obs-text is left out); also the OpenAPI document's pattern for the header. Checked
before werkzeug parses it, which reads what it cannot parse as no tags at all: a
condition sent with a typo (a missing quote, tags separated by spaces) would have let
the change through unconditionally."""
_IF_MATCH_SYNTAX = re.compile(IF_MATCH_PATTERN)


def require_match(request: Request, current: Callable[[], BaseModel]) -> None:
    """412 unless the request's `If-Match` is absent, `*` (any version: the change itself
    finds out whether there is one), or names the tag of `current()`, which the caller
    has read under the lock its change takes; 400 for a header that is none of these.
    Strong comparison: a weak tag never matches, as the RFC asks of If-Match."""
    header = request.headers.get("If-Match")
    if header is None:
        return
    if not _IF_MATCH_SYNTAX.fullmatch(header):
        raise BadRequest(
            "If-Match must be `*` or a comma-separated list of quoted entity tags, as ETag "
            'gives them (`"..."`)'
        )
    wanted = parse_etags(header)
    if wanted.star_tag:
        return
    if not wanted.contains(entity_tag(current())):
        raise PreconditionFailed(
            "it has changed since the ETag in If-Match was read: read it again"
        )


def conditional_get(request: Request, body: BaseModel) -> Response:
    """`body` with its ETag, or 304 and no body when `If-None-Match` names it (weak
    comparison, as the RFC asks of If-None-Match)."""
    text = payload(body)
    tag = _tag_of(text)
    headers = {"ETag": quote_etag(tag)}
    if request.if_none_match.contains_weak(tag):
        return Response(status=304, headers=headers)
    return json_text_response(text, headers=headers)
