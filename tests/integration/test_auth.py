"""Production authentication: JWTs verified against a JWKS served on loopback."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from duetide_tools.local.broker import free_loopback_port
from tests.integration.conftest import _reset_caches, function_client
from tests.integration.test_event_functions import binary
from tests.support import json_of, serve_command, wait_for

ISSUER = "https://issuer.example"
AUDIENCE = "duetide-api"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
# (key, JWS alg, the pyjwt algorithm class: each one's to_jwk takes its own kind of key)
KEYS: dict[str, tuple[PrivateKey, str, Any]] = {
    "rsa": (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", RSAAlgorithm),
    "ec": (ec.generate_private_key(ec.SECP256R1()), "ES256", ECAlgorithm),
    "ed": (ed25519.Ed25519PrivateKey.generate(), "EdDSA", OKPAlgorithm),
}


def jwk(kid: str) -> dict[str, Any]:
    private, alg, algorithm = KEYS[kid]
    key = json.loads(algorithm.to_jwk(private.public_key()))
    return {**key, "kid": kid, "alg": alg, "use": "sig"}


class JwksServer(BaseHTTPRequestHandler):
    hits = 0
    published: tuple[str, ...] = tuple(KEYS)  # the kids the set holds
    answer = "keys"  # or: "trickle", "huge", "reset", "fail"

    def do_GET(self) -> None:
        JwksServer.hits += 1
        if self.answer != "keys":
            self.misbehave()
            return
        body = json.dumps({"keys": [jwk(kid) for kid in self.published]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def misbehave(self) -> None:
        """An identity provider at its worst: a byte every second, an endless answer,
        a reset connection, or 502."""
        if self.answer == "fail":
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.answer == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        self.send_response(200)
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(b'{"keys": [], "padding": "')
            for _ in range(60 if self.answer == "trickle" else 10_000):
                self.wfile.write(b" " if self.answer == "trickle" else b"x" * 65536)
                self.wfile.flush()
                if self.answer == "trickle":
                    time.sleep(1)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jwks(env, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), JwksServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    JwksServer.hits, JwksServer.published, JwksServer.answer = 0, tuple(KEYS), "keys"
    url = f"http://127.0.0.1:{server.server_port}/jwks.json"
    monkeypatch.setenv("DUETIDE_AUTH", "jwks")
    monkeypatch.setenv("DUETIDE_JWKS_URL", url)
    monkeypatch.setenv("DUETIDE_JWT_ISSUER", ISSUER)
    monkeypatch.setenv("DUETIDE_JWT_AUDIENCE", AUDIENCE)
    _reset_caches()
    from duetide.web import auth

    auth._jwks.cache_clear()
    yield url
    server.shutdown()
    server.server_close()
    auth._jwks.cache_clear()


def token(kid: str = "rsa", headers: dict[str, Any] | None = None, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    private, alg, _ = KEYS[kid]
    return jwt.encode(claims, private, algorithm=alg, headers={"kid": kid, **(headers or {})})


def unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def public_pem() -> bytes:
    return (
        KEYS["rsa"][0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def tampered() -> str:
    head, payload, signature = token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{head}.{forged}.{signature}"


def confused() -> str:
    """HS256 'signed' with the RSA public key: the classic algorithm-confusion attack."""
    import hashlib
    import hmac

    head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT","kid":"rsa"}').decode().rstrip("=")
    now = int(time.time())
    body = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300}
    payload = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    mac = hmac.new(public_pem(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


@pytest.mark.parametrize("kid", ["rsa", "ec", "ed"])
def test_valid_asymmetric_tokens_are_accepted(jwks, kid):
    response = function_client("tasks").get(
        "/tasks", headers={"Authorization": f"Bearer {token(kid)}"}
    )
    assert response.status_code == 200, response.json


BAD_TOKENS = {
    "none": lambda: None,
    "alg none": lambda: unsigned({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": 2**31}),
    "hs256 with the public key": confused,
    "expired": lambda: token(exp=int(time.time()) - 3600),
    "not yet valid": lambda: token(nbf=int(time.time()) + 3600),
    "wrong issuer": lambda: token(iss="https://evil.example"),
    "wrong audience": lambda: token(aud="another-api"),
    "missing sub": lambda: token(sub=None),
    "missing exp": lambda: token(exp=None),
    "unknown kid": lambda: token(headers={"kid": "nope"}),
    "tampered payload": tampered,
    "100 KB token": lambda: token(padding="x" * 100_000),
    "garbage": lambda: "not.a.jwt",
}


@pytest.mark.parametrize("name", BAD_TOKENS)
def test_bad_tokens_are_401_never_500(jwks, name):
    value = BAD_TOKENS[name]()
    headers = {"Authorization": f"Bearer {value}"} if value else {}
    response = function_client("tasks").get("/tasks", headers=headers)
    assert response.status_code == 401, (name, response.json)
    assert json_of(response)["error"]["code"] == "unauthorized"
    assert "Bearer" in response.headers["WWW-Authenticate"]


def test_a_jwks_endpoint_that_is_down_is_503_not_401(env, monkeypatch):
    """PyJWT's connection error is a PyJWTError: an identity provider down answered every
    request "token invalid" (401), and with Knative's sender identity on, every event
    was dead-lettered without a retry."""
    monkeypatch.setenv("DUETIDE_AUTH", "jwks")
    monkeypatch.setenv("DUETIDE_JWKS_URL", f"http://127.0.0.1:{free_loopback_port()}/jwks.json")
    monkeypatch.setenv("DUETIDE_JWT_ISSUER", ISSUER)
    monkeypatch.setenv("DUETIDE_JWT_AUDIENCE", AUDIENCE)
    _reset_caches()
    from duetide.web import auth

    auth._jwks.cache_clear()
    try:
        response = function_client("tasks").get(
            "/tasks", headers={"Authorization": f"Bearer {token()}"}
        )
    finally:
        auth._jwks.cache_clear()
    assert response.status_code == 503, response.json
    assert json_of(response)["error"]["code"] == "unavailable"
    assert response.headers["Retry-After"] == "5"


def test_unknown_kids_refetch_the_jwks_at_a_bounded_rate(jwks):
    client = function_client("tasks")
    assert client.get("/tasks", headers={"Authorization": f"Bearer {token()}"}).status_code == 200
    for i in range(20):
        forged = token(headers={"kid": f"forged-{i}"})
        assert (
            client.get("/tasks", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
        )
    assert JwksServer.hits <= 2


@pytest.mark.parametrize(("signed_by", "named"), [("rsa", "ec"), ("ec", "rsa"), ("rsa", "ed")])
def test_a_token_naming_a_key_of_another_type_is_401_not_500(jwks, signed_by, named):
    """PyJWT was handed the bare key and took the token's `alg`: an RS256 token naming
    the EC key's kid raised TypeError, a 500 to anyone, no signature needed (an audit,
    2026-12-07)."""
    private, alg, _ = KEYS[signed_by]
    now = int(time.time())
    claims = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300}
    crossed = jwt.encode(claims, private, algorithm=alg, headers={"kid": named})
    response = function_client("tasks").get("/tasks", headers=bearer(crossed))
    assert response.status_code == 401, response.json


def test_a_key_withdrawn_from_the_set_stops_verifying_once_it_is_fetched_again(jwks, monkeypatch):
    """PyJWT's key cache kept every key it had found, without end: a key withdrawn
    from the set (say it leaked) went on verifying new tokens until the process ended."""
    from duetide.web import auth

    monkeypatch.setattr(auth, "JWKS_LIFESPAN_S", 0.5)
    auth._jwks.cache_clear()
    client = function_client("tasks")
    assert client.get("/tasks", headers=bearer(token("ec"))).status_code == 200
    JwksServer.published = ("rsa",)  # the issuer withdraws the EC key
    wait_for(
        lambda: (
            client.get("/tasks", headers=bearer(token("rsa", jti="a"))).status_code == 200
            and JwksServer.hits >= 2
        ),
        "the set fetched again",
        10,
    )
    fresh = token("ec", jti="never seen")  # not in the cache of verified tokens
    assert client.get("/tasks", headers=bearer(fresh)).status_code == 401


@pytest.mark.parametrize("answer", ["trickle", "huge", "reset", "fail"])
def test_a_provider_at_its_worst_is_503_in_bounded_time_and_tried_once_meanwhile(
    jwks, monkeypatch, answer
):
    """A key set sent a byte a second held every request needing a key (and `/healthz`
    once the workers were all waiting), one after another behind PyJWT's lock; 300 MiB
    of it took 900 MiB of memory; a reset connection was a 500; and while the provider
    failed, each token with a made-up kid fetched again (an audit, 2026-12-07)."""
    from duetide.web import jwks as key_sets

    monkeypatch.setattr(key_sets, "FETCH_S", 1.0)
    JwksServer.answer = answer
    client = function_client("tasks")
    started = time.monotonic()
    statuses = [
        client.get("/tasks", headers=bearer(token(headers={"kid": f"k{n}"}))).status_code
        for n in range(5)
    ]
    assert statuses == [503] * 5
    assert time.monotonic() - started < 4  # one fetch's bound, then at once
    assert JwksServer.hits == 1


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_jwks_mode_without_issuer_fails_at_start(monkeypatch, env):
    from duetide.config import ConfigError, get_settings

    monkeypatch.setenv("DUETIDE_AUTH", "jwks")
    monkeypatch.delenv("DUETIDE_JWT_ISSUER", raising=False)
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="DUETIDE_JWT_ISSUER"):
        get_settings()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_hs256_mode_without_a_secret_it_can_keep_stops_the_tasks_function_at_start(
    env, tmp_path, workers
):
    """DUETIDE_AUTH=hs256 without DUETIDE_JWT_SECRET where DUETIDE_HOME cannot be written
    (a container's read-only root: the kind overlay with the variable left out of its
    Secret): the function passed its health checks and answered every authenticated
    request 500 (an audit, 2026-12-07). Now its start stops, the variable named, in JSON
    lines, with uvicorn's status for a failed start; with workers, the supervisor's lines
    were plain text and the process exited 0 (a review, 2026-12-07)."""
    (tmp_path / "file").write_text("")
    environment = {
        **{k: v for k, v in os.environ.items() if k != "DUETIDE_JWT_SECRET"},
        "DUETIDE_AUTH": "hs256",
        "DUETIDE_HOME": str(tmp_path / "file" / "home"),  # as root, a mode would not stop it
        "WORKERS": workers,
    }
    command = serve_command("tasks", free_loopback_port())
    ran = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 3, ran.stderr
    logged = [json.loads(line) for line in ran.stderr.splitlines()]
    assert any(
        line["event"] == "config.invalid" and "DUETIDE_JWT_SECRET" in line["message"]
        for line in logged
        if "event" in line
    )


def test_symmetric_algorithms_cannot_be_configured_for_jwks(monkeypatch, env):
    from duetide.config import ConfigError, get_settings

    monkeypatch.setenv("DUETIDE_JWT_ALGORITHMS", "RS256,HS256")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="DUETIDE_JWT_ALGORITHMS"):
        get_settings()


def test_event_endpoints_can_require_knatives_sender_identity(jwks, monkeypatch):
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_AUDIENCE", "duetide-recurrence")
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_JWKS_URL", jwks)
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_ISSUER", ISSUER)
    _reset_caches()
    sink = function_client("recurrence")
    headers, body = binary("dev.duetide.task.created.v1", {"x": 1})
    assert sink.post("/", headers=headers, data=body).status_code == 401
    wrong = token(aud=AUDIENCE)
    response = sink.post("/", headers={**headers, "Authorization": f"Bearer {wrong}"}, data=body)
    assert response.status_code == 401
    good = token(aud="duetide-recurrence", sub="system:serviceaccount:default:kafkasource")
    response = sink.post("/", headers={**headers, "Authorization": f"Bearer {good}"}, data=body)
    assert response.status_code == 200 and json_of(response)["status"] == "ignored"


SOURCE = "system:serviceaccount:duetide:duetide-recurrence-oidc-sources.knative.dev-kafkasource"


@pytest.mark.parametrize("function", ["recurrence", "notify", "activity", "sweep"])
def test_event_endpoints_take_only_the_listed_senders(function, jwks, monkeypatch):
    """Any service account of the cluster can have a token for the event audience (a
    pod's projected token names any audience it asks for): every sink took such a token
    as Knative's, so any pod could post a ping or an event (SECURITY.md, 2026-12-07)."""
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_AUDIENCE", "duetide-events")
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_JWKS_URL", jwks)
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_ISSUER", ISSUER)
    monkeypatch.setenv("DUETIDE_EVENT_SENDERS", f"{SOURCE}, system:serviceaccount:duetide:other")
    _reset_caches()
    sink = function_client(function)
    headers, body = binary("org.example.unknown.v1", {"x": 1})  # another system's: ignored

    def sent_by(subject: str) -> Any:
        bearer = token(aud="duetide-events", sub=subject)
        return sink.post("/", headers={**headers, "Authorization": f"Bearer {bearer}"}, data=body)

    stranger = sent_by("system:serviceaccount:default:some-pod")
    assert stranger.status_code == 403, stranger.json
    error = json_of(stranger)["error"]
    assert error["code"] == "forbidden" and "DUETIDE_EVENT_SENDERS" in error["message"]
    assert sent_by(SOURCE[:-1]).status_code == 403  # the whole subject, not a prefix
    listed = sent_by(SOURCE)
    assert listed.status_code == 200 and json_of(listed)["status"] == "ignored"
