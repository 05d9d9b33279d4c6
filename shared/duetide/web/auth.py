"""Bearer-token authentication: the token's `sub` is the user every query is scoped to.

Two modes, chosen by DUETIDE_AUTH:
- `jwks` (production): asymmetric tokens (RS256, ES256, EdDSA by default) verified
  against a JWKS URL, with required `exp`/`sub` and the configured issuer and
  audience. PyJWT's JWKS client caches the key set and refetches it on an unknown
  `kid` at most once per cooldown, so forged kids cannot make us hammer the issuer.
- `hs256` (explicit opt-in; the local default): a shared secret, DUETIDE_JWT_SECRET.
The algorithm list is fixed by the server, never taken from the token's header.
The same verifier checks Knative's OIDC sender tokens on the event endpoints.

PyJWT is imported where a token is made or checked, not with this module: it loads
cryptography (~30 ms and ~9 MB of a cold start), which the event functions import this
module for but use only when Knative's OIDC is on (bench/results/cold_start.md). The API,
which checks a token on every request, imports it at start-up (`import_verifier`).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flask import Request

from duetide.config import Settings, get_settings
from duetide.errors import Forbidden, Unauthorized, Unavailable
from duetide.storage.models import utcnow

if TYPE_CHECKING:
    import jwt

MAX_TOKEN_BYTES = 8192
MAX_SUBJECT_CHARS = 255
LOCAL_TOKEN_TTL = timedelta(days=30)
JWKS_COOLDOWN_S = 30.0
JWKS_LIFESPAN_S = 300.0
"""How long a fetched key set is used before it is fetched again."""
LEEWAY_S = 30


class _Verified:
    """Tokens verified in the last VERIFIED_TTL_S, and their subjects.

    A client sends the same token with every request, and checking it (decoding, the
    signature, the claims) was a fifth of a simple read's CPU. A token seen valid is
    taken as valid again until the sooner of its expiry and VERIFIED_TTL_S after the
    check, as an API gateway's JWT cache does (Envoy's `jwt_cache_config`); past that it
    is checked again, so a key withdrawn from the JWKS stops its tokens within the TTL.
    Only tokens that verified are kept, at most VERIFIED_MAX of them, each at most
    VERIFIED_MAX_BYTES long (about 2 MB in all); the least recently used goes first.
    """

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[Verifier, str], tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Verifier, str]) -> str | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            if time.time() >= found[1]:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return found[0]

    def put(self, key: tuple[Verifier, str], subject: str, expires: float) -> None:
        if len(key[1]) > VERIFIED_MAX_BYTES:
            return
        with self._lock:
            self._items[key] = (subject, min(expires, time.time() + VERIFIED_TTL_S))
            self._items.move_to_end(key)
            while len(self._items) > VERIFIED_MAX:
                self._items.popitem(last=False)


VERIFIED_TTL_S = 60.0
VERIFIED_MAX = 1024
VERIFIED_MAX_BYTES = 2048
_verified = _Verified()


@dataclass(frozen=True)
class Verifier:
    """How tokens of one audience are checked; `jwks_url` empty means HS256."""

    algorithms: tuple[str, ...]
    secret: str = ""
    jwks_url: str = ""
    issuer: str = ""
    audience: str = ""

    def claims(self, token: str) -> dict[str, Any]:
        import jwt  # on the first token checked: see the module's docstring

        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("the bearer token is too large")
        required = [
            "exp",
            "sub",
            *(["iss"] if self.issuer else []),
            *(["aud"] if self.audience else []),
        ]
        try:
            # The key as PyJWK, not its `.key`: PyJWT then holds the token's `alg` to the
            # key's type; a bare key of another type (an RS256 token naming an EC key's
            # `kid`) raised TypeError from deep in PyJWT, a 500 to anyone (an audit,
            # 2026-12-07).
            key: Any = (
                _jwks(self.jwks_url).get_signing_key_from_jwt(token)
                if self.jwks_url
                else self.secret
            )
            return jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                issuer=self.issuer or None,
                audience=self.audience or None,
                options={"require": required, "verify_aud": bool(self.audience)},
                leeway=LEEWAY_S,
            )
        except jwt.PyJWKClientConnectionError:  # the provider, not the token: retry
            raise Unavailable(
                "the identity provider's keys could not be fetched; retry",
                headers={"Retry-After": "5"},
            ) from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthorized("the bearer token is invalid or expired") from None

    def subject(self, token: str) -> str:
        """The user id: 1 to 255 printable characters. A validly signed token can still
        carry a NUL, a control character or a lone surrogate (JSON's "\\ud800") in `sub`,
        which no database can store or compare; it is refused like any bad token."""
        known = _verified.get((self, token))
        if known is not None:
            return known
        claims = self.claims(token)
        subject = claims.get("sub")
        if not usable_user_id(subject):
            raise Unauthorized("the bearer token has no usable subject")
        assert isinstance(subject, str)  # usable_user_id said so
        _verified.put((self, token), subject, float(claims["exp"]) + LEEWAY_S)
        return subject

    def addressed_by(self, token: str) -> bool:
        """Whether `token` names this verifier's audience, read without verifying: it
        only picks the verifier, which then checks everything."""
        if not self.audience or len(token) > MAX_TOKEN_BYTES:
            return False
        import jwt  # on the first token checked: see the module's docstring

        try:
            audience = jwt.decode(token, options={"verify_signature": False}).get("aud")
        except jwt.PyJWTError:
            return False
        return self.audience == audience or (
            isinstance(audience, list) and self.audience in audience
        )


def usable_user_id(value: object) -> bool:
    """1 to 255 printable characters: what a user id (a token's `sub`) must be."""
    return isinstance(value, str) and 0 < len(value) <= MAX_SUBJECT_CHARS and value.isprintable()


@functools.cache
def _jwks(url: str) -> jwt.PyJWKClient:
    """The key set of `url`, kept `lifespan` seconds. Without PyJWT's `cache_keys`: it
    keeps each key found in a cache of its own that never expires, and a key withdrawn
    from the set (leaked) went on verifying new tokens until the process ended (an
    audit, 2026-12-07); found in the cached set instead, it goes with the set."""
    from duetide.web.jwks import KeySetClient  # with PyJWT: see the module's docstring

    return KeySetClient(
        url,
        cache_keys=False,
        lifespan=JWKS_LIFESPAN_S,
        timeout=5,
        cooldown_duration=JWKS_COOLDOWN_S,
    )


@functools.cache
def api_verifier() -> Verifier:
    """The API's verifier, built once per process from the settings."""
    settings = get_settings()
    if settings.duetide_auth == "jwks":
        return Verifier(
            algorithms=tuple(settings.duetide_jwt_algorithms),
            jwks_url=settings.duetide_jwks_url,
            issuer=settings.duetide_jwt_issuer,
            audience=settings.duetide_jwt_audience,
        )
    return Verifier(algorithms=("HS256",), secret=settings.jwt_secret())


@functools.cache
def event_verifier() -> Verifier | None:
    """Knative's sender identity on the event endpoints (DUETIDE_EVENT_OIDC_AUDIENCE)."""
    settings = get_settings()
    if not settings.duetide_event_oidc_audience:
        return None
    return Verifier(
        algorithms=("RS256", "ES256"),
        jwks_url=settings.duetide_event_oidc_jwks_url,
        issuer=settings.duetide_event_oidc_issuer,
        audience=settings.duetide_event_oidc_audience,
    )


def import_verifier() -> None:
    """Import PyJWT (and cryptography) now: for the API, whose every request checks a
    token, so the first requests of a new pod do not wait for it (about 0.1 s)."""
    import jwt  # noqa: F401


def issue_local_token(user: str, settings: Settings | None = None) -> str:
    """An HS256 token for `user`, for local development and tests."""
    import jwt  # local tokens only: see the module's docstring

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


def knative_sender(token: str) -> str | None:
    """The OIDC subject of Knative's sender token, if `token` is one (it names the event
    audience, DUETIDE_EVENT_OIDC_AUDIENCE, which must differ from the API's); None for any
    other token. 401 for a sender token that does not verify, 403 for a sender not listed."""
    verifier = event_verifier()
    if verifier is None or not verifier.addressed_by(token):
        return None
    return _listed(verifier.subject(token))


def require_sender(request: Request) -> None:
    """The gate of every event endpoint while Knative's sender identity is on: a token for
    the event audience (401 without one), of a listed sender (403 for another)."""
    verifier = event_verifier()
    if verifier is not None:
        _listed(verifier.subject(bearer_token(request)))


def _listed(sender: str) -> str:
    """Any service account of the cluster can have a token for the event audience (a
    pod's projected token): with DUETIDE_EVENT_SENDERS set, only duetide's sources pass."""
    allowed = get_settings().event_senders
    if allowed and sender not in allowed:
        raise Forbidden(f"the sender {sender!r} is not one of DUETIDE_EVENT_SENDERS")
    return sender


def authenticate(request: Request) -> str:
    """The user id (`sub`) of the request's valid bearer token, or 401."""
    return verify(bearer_token(request))


def verify(token: str) -> str:
    """The user id (`sub`) of a valid API token, or 401 without saying which check failed."""
    return api_verifier().subject(token)
