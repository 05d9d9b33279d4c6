"""The cache of verified bearer tokens: what it saves, and that it never widens a token's
validity (its expiry, its key, its audience) nor grows without bound."""

from __future__ import annotations

import time

import jwt
import pytest

from duetide.errors import Unauthorized
from duetide.web import auth

SECRET = "a-test-secret-of-enough-length-for-hs256-tokens"


def verifier(secret: str = SECRET) -> auth.Verifier:
    return auth.Verifier(algorithms=("HS256",), secret=secret)


def token(sub: str = "ann", exp_in: float = 600, secret: str = SECRET) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + exp_in)}, secret, algorithm="HS256")


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(auth, "_verified", auth._Verified())


@pytest.fixture
def checks(monkeypatch) -> list[str]:
    """The tokens fully checked (decoded and their signature verified)."""
    seen: list[str] = []
    claims = auth.Verifier.claims

    def counted(self: auth.Verifier, given: str) -> dict:
        seen.append(given)
        return claims(self, given)

    monkeypatch.setattr(auth.Verifier, "claims", counted)
    return seen


def test_a_token_is_checked_once_then_known(checks):
    given = token()
    assert [verifier().subject(given) for _ in range(3)] == ["ann"] * 3
    assert checks == [given]


def test_a_refused_token_is_checked_every_time(checks):
    forged = token(secret="another-secret-of-enough-length-for-hs256")
    for _ in range(2):
        with pytest.raises(Unauthorized):
            verifier().subject(forged)
    assert checks == [forged, forged]


def test_a_token_known_to_one_key_is_not_known_to_another(checks):
    given = token()
    assert verifier().subject(given) == "ann"
    with pytest.raises(Unauthorized):
        verifier("another-secret-of-enough-length-for-hs256").subject(given)


def test_a_known_token_is_checked_again_once_past_its_expiry(checks, monkeypatch):
    """Known until its expiry plus the leeway PyJWT grants, or the TTL, whichever first."""
    given = token(exp_in=-auth.LEEWAY_S + 10)  # valid with the leeway for 9 to 10 s more
    assert verifier().subject(given) == "ann"
    now = time.time()
    monkeypatch.setattr(auth.time, "time", lambda: now + 5)
    verifier().subject(given)
    assert len(checks) == 1
    monkeypatch.setattr(auth.time, "time", lambda: now + 11)
    verifier().subject(given)  # PyJWT's clock is the real one: still valid there
    assert len(checks) == 2


def test_a_long_lived_token_is_checked_again_after_the_ttl(checks, monkeypatch):
    given = token(exp_in=86400)
    verifier().subject(given)
    now = time.time()
    monkeypatch.setattr(auth.time, "time", lambda: now + auth.VERIFIED_TTL_S + 1)
    verifier().subject(given)
    assert checks == [given, given]


def test_the_cache_is_bounded_in_entries_and_token_size(checks):
    many = [token(sub=f"user-{i}") for i in range(auth.VERIFIED_MAX + 10)]
    for given in many:
        verifier().subject(given)
    assert len(auth._verified._items) == auth.VERIFIED_MAX
    verifier().subject(many[0])  # the least recently used went first
    assert checks.count(many[0]) == 2
    padded = jwt.encode(
        {"sub": "ann", "exp": int(time.time()) + 600, "pad": "x" * auth.VERIFIED_MAX_BYTES},
        SECRET,
        algorithm="HS256",
    )
    verifier().subject(padded)
    verifier().subject(padded)
    assert checks.count(padded) == 2
