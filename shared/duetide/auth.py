"""Bearer-token authentication: the token's `sub` is the user every query is scoped to.

Local mode signs HS256 tokens with DUETIDE_JWT_SECRET (generated into DUETIDE_HOME
when unset). The algorithm list is fixed by the server, never taken from the token.
"""

from __future__ import annotations

from datetime import timedelta

import jwt
from flask import Request

from duetide.config import Settings, get_settings
from duetide.errors import Unauthorized
from duetide.models import utcnow

MAX_TOKEN_BYTES = 8192
LOCAL_TOKEN_TTL = timedelta(days=30)


def issue_local_token(user: str, settings: Settings | None = None) -> str:
    """An HS256 token for `user`, for local development and tests."""
    settings = settings or get_settings()
    now = utcnow()
    claims = {"sub": user, "iat": now, "nbf": now, "exp": now + LOCAL_TOKEN_TTL}
    return jwt.encode(claims, settings.jwt_secret(), algorithm="HS256")


def bearer_token(request: Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    return token.strip()


def authenticate(request: Request) -> str:
    """The user id (`sub`) of the request's valid bearer token, or 401."""
    return verify(bearer_token(request))


def verify(token: str) -> str:
    """The user id (`sub`) of a valid token, or 401 without saying which check failed."""
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthorized("the bearer token is too large")
    try:
        claims = jwt.decode(
            token,
            get_settings().jwt_secret(),
            algorithms=["HS256"],
            options={"require": ["exp", "sub"]},
            leeway=30,
        )
    except jwt.PyJWTError:
        raise Unauthorized("the bearer token is invalid or expired") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise Unauthorized("the bearer token has no usable subject")
    return subject
